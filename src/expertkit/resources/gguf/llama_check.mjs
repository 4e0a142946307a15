// Load a GGUF in llama.cpp (node-llama-cpp's prebuilt CPU binary) and report, for each text: its token ids
// (special tokens parsed, no BOS added: the texts carry what the template wrote) and the greedy continuation,
// stopping on llama.cpp's end-of-generation tokens. Run by expertkit's GGUF export check:
//   node llama_check.mjs request.json   -> JSON on stdout
// request: {"models": [path...], "context_size": n, "texts": [{"text": s, "generate": max_new_tokens}]}
// -> [{"results": [{"tokens", "generated", "stop"}], "bos", "eog", "prepend_bos"}] per model
import fs from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const request = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const reports = [];
for (const modelPath of request.models) {
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
  const context = await model.createContext({ contextSize: request.context_size, sequences: 1 });
  const sequence = context.getSequence();
  const results = [];
  for (const item of request.texts) {
    const tokens = Array.from(model.tokenize(item.text, true));
    const generated = [];
    let stop = null;
    if (item.generate > 0) {
      await sequence.clearHistory();
      for await (const token of sequence.evaluate(tokens, { temperature: 0, yieldEogToken: true })) {
        if (model.isEogToken(token)) {
          stop = token;
          break;
        }
        generated.push(token);
        if (generated.length >= item.generate) break;
      }
    }
    results.push({ tokens, generated, stop });
  }
  const eog = [model.tokens.eos, model.tokens.eot].filter((t) => t != null);
  reports.push({ results, bos: model.tokens.bos, eog, prepend_bos: model.tokens.shouldPrependBosToken });
  await context.dispose();
  await model.dispose();
}
console.log(JSON.stringify(reports));
await llama.dispose();
