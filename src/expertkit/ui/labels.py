"""The UI's words in English and Chinese. Config keys keep their YAML names in both: they are what users type.

Field explanations come from the config classes' docstrings (English), as everywhere else.
"""

from __future__ import annotations

EN = {
    "title": "expertkit",
    "subtitle": "Chat with a model, fine-tune it, evaluate it and export it: each long job runs as its own process.",
    # tabs
    "chat": "Chat",
    "train": "Train",
    "eval": "Evaluate",
    "export": "Export",
    # chat
    "model": "Model",
    "refresh": "Refresh",
    "system": "System prompt",
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "message": "Message",
    "message_placeholder": "Ask something, then press Enter",
    "send": "Send",
    "new_chat": "New chat",
    "reasoning": "Reasoning",
    "server": "Server",
    "server_waiting": "waiting for the server at {url} ...",
    "server_ready": "{n} model(s) at {url}",
    "no_server": "no chat server: start the UI with model_name_or_path=... or server_url=...",
    "feedback_hint": "Rate answers with thumbs up / down under them, or edit an answer (the pencil): both are stored "
    "for the next training round.",
    "export_feedback": "Export feedback as training data",
    "feedback_exported": "{n} conversation(s) -> {path}\ntrain on them with: {command}",
    "later": "Knowledge base and web search in the chat come later (the server has no retrieval option yet); "
    "use `expertkit ask` meanwhile.",
    # forms
    "advanced": "Advanced settings",
    "show_yaml": "Show YAML",
    "show_command": "Show command",
    "start": "Start",
    "stop": "Stop",
    "resume": "Resume",
    "status": "Status",
    "log": "Log",
    "yaml": "YAML",
    "command": "Command",
    # train
    "dataset_preview": "Dataset preview",
    "check_data": "Check data (counts, token lengths)",
    "runs": "Runs",
    "run": "Run",
    "progress": "Progress",
    "loss": "Loss",
    "runs_refresh": "Refresh runs",
    "progress_line": "{status}: step {step}/{total} ({percent:.0f}%), loss {loss}, elapsed {elapsed}, "
    "remaining {remaining}",
    "no_run": "no run selected",
    "started": "started: {command}",
    "stopping": "stopping (Ctrl-C sent; force-stopped if still running in {grace:.0f} s)",
    "not_running": "nothing is running there",
    # eval / export
    "report": "Report",
    "metrics": "Metrics",
    "open_report": "open report.html in a new tab",
    "result": "Result",
    "exported_to": "exported to {path}",
    # statuses
    "running": "running",
    "finished": "finished",
    "stopped": "stopped",
    "failed": "failed",
    "none": "not started",
}

ZH = {
    "title": "expertkit",
    "subtitle": "与模型对话、微调、评估和导出：每个耗时任务都在独立进程中运行。",
    "chat": "对话",
    "train": "训练",
    "eval": "评估",
    "export": "导出",
    "model": "模型",
    "refresh": "刷新",
    "system": "系统提示词",
    "temperature": "temperature（温度）",
    "top_p": "top_p",
    "max_tokens": "max_tokens（最大生成长度）",
    "message": "消息",
    "message_placeholder": "输入问题后按回车",
    "send": "发送",
    "new_chat": "新对话",
    "reasoning": "思考过程",
    "server": "服务",
    "server_waiting": "正在等待服务 {url} ……",
    "server_ready": "{url} 上有 {n} 个模型",
    "no_server": "没有对话服务：启动时请指定 model_name_or_path=... 或 server_url=...",
    "feedback_hint": "用回答下方的赞 / 踩评价回答，或编辑回答（铅笔图标）：都会保存，用于下一轮训练。",
    "export_feedback": "导出反馈为训练数据",
    "feedback_exported": "{n} 条对话 -> {path}\n用它训练：{command}",
    "later": "对话中的知识库与联网搜索稍后提供（服务端暂无检索选项）；目前请使用 `expertkit ask`。",
    "advanced": "高级设置",
    "show_yaml": "显示 YAML",
    "show_command": "显示命令",
    "start": "开始",
    "stop": "停止",
    "resume": "继续训练",
    "status": "状态",
    "log": "日志",
    "yaml": "YAML",
    "command": "命令",
    "dataset_preview": "数据预览",
    "check_data": "检查数据（条数、token 长度）",
    "runs": "训练记录",
    "run": "训练",
    "progress": "进度",
    "loss": "损失",
    "runs_refresh": "刷新训练记录",
    "progress_line": "{status}：第 {step}/{total} 步（{percent:.0f}%），loss {loss}，已用 {elapsed}，剩余 {remaining}",
    "no_run": "未选择训练",
    "started": "已启动：{command}",
    "stopping": "正在停止（已发送 Ctrl-C；{grace:.0f} 秒后仍在运行则强制停止）",
    "not_running": "该目录没有正在运行的任务",
    "report": "报告",
    "metrics": "指标",
    "open_report": "在新标签页中打开 report.html",
    "result": "结果",
    "exported_to": "已导出到 {path}",
    "running": "运行中",
    "finished": "已完成",
    "stopped": "已停止",
    "failed": "失败",
    "none": "未开始",
}

LABELS = {"en": EN, "zh": ZH}


def labels(lang: str) -> dict[str, str]:
    """The label dict of a language (every language has every key; a test checks it)."""
    return LABELS[lang]
