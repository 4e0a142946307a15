"""Key names a LLaMA-Factory training YAML may hold that expertkit does not read (yet).

Collected from LLaMA-Factory's `hparams` dataclasses (model, data, finetuning, generating, training, evaluation
arguments) and transformers' `Seq2SeqTrainingArguments` (4.x and 5.x), minus the keys `TrainConfig` supports.
A file that uses them trains with one warning listing them, instead of failing on an unknown key, unless the
key changes what is computed (`LF_REFUSED`): then a value other than LLaMA-Factory's default stops the run.
"""

LF_UNSUPPORTED = frozenset(
    """
    accelerator_config activation_checkpointing activation_checkpointing_kwargs adapter_folder add_special_tokens
    add_tokens additional_target apollo_layerwise apollo_proj
    apollo_proj_type apollo_rank apollo_scale apollo_scale_front apollo_scale_type apollo_target
    apollo_update_interval audio_sampling_rate auto_find_batch_size average_tokens_across_devices
    badam_mask_mode badam_mode badam_start_block badam_switch_interval badam_switch_mode badam_update_ratio
    badam_verbose batch_eval_metrics batch_size bf16_full_eval buffer_size cache_dir chunk_size compute_accuracy
    cpu_infer create_new_adapter crop_to_patches data_seed data_shared_file_system dataloader_drop_last
    dataloader_in_order dataloader_multiprocessing_context dataloader_num_workers dataloader_persistent_workers
    dataloader_pin_memory dataloader_prefetch_factor ddp_backend ddp_broadcast_buffers ddp_bucket_cap_mb
    ddp_find_unused_parameters ddp_static_graph ddp_timeout debug default_system disable_shuffling
    disable_tqdm do_eval do_predict do_sample download_mode 
    early_stopping_steps enable_jit_checkpoint enable_thinking enable_torch_profiler
    eval_accumulation_steps eval_dataset eval_delay eval_do_concat_batches eval_num_beams eval_on_each_dataset
    eval_on_start eval_use_gather_object evaluation_strategy export_device export_dir export_hub_model_id
    export_legacy_format export_quantization_bit export_quantization_dataset export_quantization_maxlen
    export_quantization_nsamples export_size fp16_backend fp16_full_eval fp16_opt_level fp8
    fp8_backend fp8_enable_fsdp_float8_all_gather freeze_extra_modules freeze_language_model
    freeze_multi_modal_projector freeze_trainable_modules freeze_vision_tower full_determinism
    galore_layerwise galore_proj_type galore_rank galore_scale galore_target galore_update_interval
    generation_config generation_max_length generation_num_beams gradient_checkpointing_kwargs greater_is_better
    half_precision_backend hf_hub_token hub_always_push hub_model_id hub_private_repo hub_revision hub_strategy
    hub_token ignore_data_skip ignore_pad_token_for_loss image_do_pan_and_scan image_max_pixels image_min_pixels
    image_resolution include_effective_tokens_per_second include_for_metrics include_inputs_for_metrics
    include_num_input_tokens_seen include_tokens_per_second infer_backend infer_dtype init_special_tokens
    jit_mode_eval kt_config kt_cpu_activation kt_expert_checkpoint_path kt_force_think
    kt_lora_expert_intermediate_size kt_lora_expert_num kt_maxlen kt_mode kt_non_expert_weight_path
    kt_optimize_rule kt_use_cuda_graph kt_use_lora_experts kt_weight_path
    label_names label_smoothing_factor lang ld_alpha length_column_name length_penalty liger_kernel_config
    load_best_model_at_end local_rank log_level log_level_replica log_on_each_node logging_dir
    logging_first_step logging_nan_inf_filter logging_strategy lora_parameters loraplus_lr_embedding
    loraplus_lr_ratio low_cpu_mem_usage lr_scheduler_kwargs master_addr master_port max_length
    media_dir metric_for_best_model mixture_of_depths mode model_revision module_dropout
    module_to_save moe_aux_loss_coef mp_parameters ms_hub_token n_shot neat_packing neftune_noise_alpha
    new_special_tokens new_special_tokens_config no_cuda num_beams offload_folder oft_block_size oft_rank
    oft_target om_hub_token optim_args optim_target_modules overwrite_cache parallelism_config past_index
    pissa_convert pissa_init pissa_iter placement_strategy    
     predict_with_generate prediction_loss_only pref_bco_weight   
    preprocessing_batch_size preprocessing_num_workers preserve_thinking print_param_status profile_modules
    profiler_active_steps profiler_output_dir profiler_profile_memory profiler_record_shapes profiler_repeat
    profiler_wait_steps profiler_warmup_steps profiler_with_stack project pure_bf16 push_to_hub
    push_to_hub_model_id push_to_hub_organization push_to_hub_token quantization_device_map
    quantization_method ray_init_kwargs ray_num_workers ray_run_name ray_scope
    ray_storage_filesystem ray_storage_path ref_model ref_model_adapters ref_model_quantization_bit
    remove_unused_columns repetition_penalty resize_vocab resources_per_worker
    restore_callback_states_from_checkpoint  reward_model_adapters reward_model_quantization_bit
     rope_scaling run_name save_dir save_on_each_node save_only_model save_safetensors
    save_strategy sglang_config sglang_lora_backend sglang_maxlen sglang_mem_fraction sglang_tp_size shift_attn
     skip_memory_metrics skip_special_tokens sortish_sampler split_special_tokens streaming
    swanlab_api_key swanlab_lark_secret swanlab_lark_webhook_url swanlab_logdir swanlab_mode swanlab_project
    swanlab_run_name swanlab_workspace system_message task task_dir  tf32 tokenized_path tool_format
      torch_compile torch_compile_backend torch_compile_mode torch_empty_cache_steps torchdynamo
    tpu_num_cores trackio_bucket_id trackio_space_id trackio_static_space_id train_from_scratch
    train_mm_proj_only train_sampling_strategy upcast_layernorm upcast_lmhead_output use_adam_mini use_apollo
    use_audio_in_video use_badam use_cache use_cpu use_dft_loss use_fast_tokenizer use_galore use_ipex use_kt
    use_kv_cache use_legacy_prediction_loop use_liger_kernel use_llama_pro use_mca use_mps_device use_muon
    use_reentrant_gc use_swanlab use_unsloth use_unsloth_gc use_v1_kernels video_fps video_max_pixels
    video_maxlen video_min_pixels video_resolution vllm_config vllm_enforce_eager vllm_gpu_util
    vllm_max_lora_rank vllm_maxlen
    """.split()
)

_OPT = "drop the key to train with `optim` (adamw_torch by default)"
_NO = "drop the key, or set it to LLaMA-Factory's default"

# Keys that change what is computed (the math, the data or the hardware). A value other than LLaMA-Factory's
# default stops the run with what to do instead; the default itself is accepted with the warning above.
# key -> (LLaMA-Factory's default, what the key does, what to do instead)
LF_REFUSED: dict[str, tuple[object, str, str]] = {
    "use_unsloth": (False, "swaps in Unsloth's kernels", "drop the key: expertkit trains with transformers' own"),
    "use_unsloth_gc": (False, "uses Unsloth's gradient checkpointing", "use gradient_checkpointing=true instead"),
    "use_liger_kernel": (False, "swaps in Liger's fused kernels", "use LLaMA-Factory's enable_liger_kernel=true"),
    "use_galore": (False, "trains with the GaLore optimiser", _OPT),
    "use_apollo": (False, "trains with the APOLLO optimiser", _OPT),
    "use_badam": (False, "trains with the BAdam optimiser", _OPT),
    "use_adam_mini": (False, "trains with Adam-mini", _OPT),
    "use_muon": (False, "trains with Muon", _OPT),
    "use_llama_pro": (False, "expands the model with new blocks (LLaMA Pro)", _NO),
    "use_dft_loss": (False, "trains with the DFT loss", _NO),
    "use_kt": (False, "trains with KTransformers", _NO),
    "use_mca": (False, "trains with Megatron-Core adapters", _NO),
    "loraplus_lr_ratio": (None, "gives LoRA's B matrices a higher learning rate (LoRA+)", _NO),
    "pissa_init": (False, "initialises LoRA from the weights' principal components (PiSSA)", _NO),
    "pissa_convert": (False, "converts a PiSSA adapter", _NO),
    "create_new_adapter": (False, "stacks a new adapter on adapter_name_or_path", _NO),
    "additional_target": (None, "trains extra modules beside LoRA", _NO),
    "neftune_noise_alpha": (None, "adds NEFTune noise to the embeddings", _NO),
    "rope_scaling": (None, "stretches the context with RoPE scaling", _NO),
    "shift_attn": (False, "uses shift short attention (LongLoRA)", _NO),
    "mixture_of_depths": (None, "converts the model to mixture-of-depths", _NO),
    "train_from_scratch": (False, "starts from random weights", _NO),
    "resize_vocab": (False, "resizes the embeddings", _NO),
    "new_special_tokens": (None, "adds tokens to the vocabulary", _NO),
    "add_tokens": (None, "adds tokens to the vocabulary", _NO),
    "add_special_tokens": (None, "adds special tokens to the vocabulary", _NO),
    "upcast_layernorm": (False, "keeps layer norms in fp32", _NO),
    "upcast_lmhead_output": (False, "computes the output head in fp32", _NO),
    "neat_packing": (
        False,
        "packs without cross-attention (neat packing)",
        "use packing=true (each example still attends only to itself)",
    ),
    "pure_bf16": (False, "trains in pure bf16 without fp32 master weights", "use bf16=true (mixed precision)"),
    "fp8": (False, "trains in fp8", _NO),
    "freeze_trainable_modules": ("all", "limits freeze training to some modules", _NO),
    "freeze_extra_modules": (None, "trains extra modules in freeze training", _NO),
    "default_system": (
        None,
        "adds a system prompt to every example",
        "put the system prompt in the data's system column",
    ),
    "enable_thinking": (True, "changes how reasoning models' templates render thinking", _NO),
    "tool_format": (None, "changes how tools are rendered", "use the chat template's own tool format (template)"),
    "streaming": (False, "streams the dataset", _NO),
    "tokenized_path": (None, "trains on a saved tokenized dataset", "point dataset at the source data"),
    "eval_dataset": (None, "evaluates on a separate dataset", "use val_size to hold rows out"),
    "do_predict": (
        False,
        "predicts on eval_dataset (LLaMA-Factory's batch prediction) instead of training",
        "run the same YAML with `expertkit eval predict.yaml`: it writes output_dir/generated_predictions.jsonl",
    ),
    "label_smoothing_factor": (0.0, "smooths the labels", _NO),
    "lr_scheduler_kwargs": (None, "passes extra arguments to the schedule", _NO),
    "optim_args": (None, "passes extra arguments to the optimiser", _NO),
    "optim_target_modules": (None, "limits the optimiser to some modules", _NO),
    "data_seed": (None, "seeds the data sampler apart from seed", "use seed"),
    "dataloader_drop_last": (False, "drops the last incomplete batch", _NO),
    "disable_shuffling": (False, "trains in file order", _NO),
    "full_determinism": (False, "forces deterministic kernels", _NO),
    "use_cpu": (False, "forces the CPU", "hide the GPUs (CUDA_VISIBLE_DEVICES=) instead"),
    "no_cuda": (False, "forces the CPU", "hide the GPUs (CUDA_VISIBLE_DEVICES=) instead"),
    "tf32": (None, "switches TF32 matrix maths on or off", _NO),
    "torch_compile": (False, "compiles the model", _NO),
}
