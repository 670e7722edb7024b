// Generates text with a `bitnet-onnx build --for web` folder in Node, with Transformers.js
// (which runs the graph on onnxruntime-node's CPU kernels).
//
//   node examples/node/generate.mjs MODEL_DIR "Your prompt" [--max-new-tokens N]
//
// Streams the continuation to stdout (greedy decoding), then prints the token count and
// tokens per second to stderr. `generate()` is the same thing as a function, for scripts.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { AutoModelForCausalLM, AutoTokenizer, TextStreamer, env } from '@huggingface/transformers';

// A local folder only: never the Hugging Face Hub.
env.allowRemoteModels = false;
env.allowLocalModels = true;

/** Loads MODEL_DIR once: `{ tokenizer, model }`. */
export async function load(modelDir, { device = 'cpu' } = {}) {
    // An absolute path is used as it is (a relative one would be read under env.localModelPath).
    const dir = path.resolve(modelDir);
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) {
        if (!fs.existsSync(path.join(dir, f))) {
            throw new Error(
                `${path.join(dir, f)} not found: MODEL_DIR must be a folder from \`bitnet-onnx build CHECKPOINT -o DIR --for web\``,
            );
        }
    }
    const tokenizer = await AutoTokenizer.from_pretrained(dir);
    // The folder's config.json names its dtype (q2) and its external data file.
    const model = await AutoModelForCausalLM.from_pretrained(dir, { device });
    return { tokenizer, model };
}

/**
 * Greedy generation from `prompt` (BOS added as transformers' tokenizer adds it).
 * `onText` receives the text as it streams. Returns the prompt ids, the new ids, the
 * continuation's text and the decode speed (new tokens after the first, per second, so the
 * prompt's processing is not counted).
 */
export async function generate({ tokenizer, model }, prompt, { maxNewTokens = 40, onText = null } = {}) {
    const inputs = tokenizer(prompt, { add_special_tokens: true });
    const promptIds = Array.from(inputs.input_ids.data, Number);
    const stamps = [];
    const streamer = new TextStreamer(tokenizer, {
        skip_prompt: true,
        skip_special_tokens: true,
        callback_function: (text) => onText?.(text),
        token_callback_function: () => stamps.push(performance.now()),
    });
    const start = performance.now();
    const out = await model.generate({ ...inputs, max_new_tokens: maxNewTokens, do_sample: false, streamer });
    const end = performance.now();
    const all = Array.from(out.data, Number);
    const newIds = all.slice(promptIds.length);
    const decodeSeconds = stamps.length > 1 ? (stamps[stamps.length - 1] - stamps[0]) / 1000 : NaN;
    return {
        promptIds,
        newIds,
        text: tokenizer.decode(newIds, { skip_special_tokens: true }),
        seconds: (end - start) / 1000,
        firstTokenSeconds: stamps.length > 0 ? (stamps[0] - start) / 1000 : NaN,
        tokensPerSecond: stamps.length > 1 ? (stamps.length - 1) / decodeSeconds : NaN,
    };
}

async function main(argv) {
    const args = argv.slice(2);
    let maxNewTokens = 40;
    const i = args.indexOf('--max-new-tokens');
    if (i >= 0) {
        maxNewTokens = Number.parseInt(args[i + 1], 10);
        args.splice(i, 2);
    }
    if (args.length !== 2 || !(maxNewTokens > 0)) {
        console.error('usage: node generate.mjs MODEL_DIR PROMPT [--max-new-tokens N]');
        return 2;
    }
    const [modelDir, prompt] = args;
    const loaded = await load(modelDir);
    process.stdout.write(prompt);
    const r = await generate(loaded, prompt, { maxNewTokens, onText: (t) => process.stdout.write(t) });
    process.stdout.write('\n');
    console.error(
        `${r.newIds.length} new tokens in ${r.seconds.toFixed(2)} s ` +
            `(first after ${r.firstTokenSeconds.toFixed(2)} s, then ${r.tokensPerSecond.toFixed(1)} tokens/s)`,
    );
    return 0;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
    main(process.argv).then(
        (code) => process.exit(code),
        (e) => {
            console.error(`error: ${e?.message ?? e}`);
            process.exit(2);
        },
    );
}
