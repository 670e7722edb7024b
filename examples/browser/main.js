// The page's script: loads the model folder served at ./model/ (see serve.py) with
// Transformers.js, streams greedy generations into the page and shows tokens per second.
// Everything is served from this machine: Transformers.js from node_modules (installed by
// `npm ci` in examples/), onnxruntime-web's WebAssembly files likewise, never a CDN.
import { AutoModelForCausalLM, AutoTokenizer, TextStreamer, env } from '/node_modules/@huggingface/transformers/dist/transformers.js';

// The model folder is served at ./model/ (serve.py): Transformers.js's "local" models are
// files under env.localModelPath on the page's own server; nothing comes from the Hub.
const MODEL = 'model';
env.localModelPath = new URL('.', window.location.href).pathname;
env.allowLocalModels = true;
env.allowRemoteModels = false;
env.useBrowserCache = false; // always what the server has now (a rebuilt folder is read again)
// Transformers.js points onnxruntime-web at a CDN for its .wasm/.mjs files by default.
const ORT_DIST = new URL('/node_modules/onnxruntime-web/dist/', window.location.href).href;
env.backends.onnx.wasm.wasmPaths = {
    mjs: `${ORT_DIST}ort-wasm-simd-threaded.asyncify.mjs`,
    wasm: `${ORT_DIST}ort-wasm-simd-threaded.asyncify.wasm`,
};

const loaded = new Map();

/** Loads the folder for `device` ('wasm' or 'webgpu'), once per device. */
async function load(device) {
    if (!loaded.has(device)) {
        loaded.set(
            device,
            (async () => {
                const t0 = performance.now();
                const tokenizer = await AutoTokenizer.from_pretrained(MODEL);
                const model = await AutoModelForCausalLM.from_pretrained(MODEL, { device });
                return { tokenizer, model, loadSeconds: (performance.now() - t0) / 1000 };
            })(),
        );
    }
    try {
        return await loaded.get(device);
    } catch (e) {
        loaded.delete(device);
        throw e;
    }
}

/**
 * Greedy generation on `device`: the prompt's ids (BOS added, as transformers' tokenizer adds
 * it), the new ids, their text, and the decode speed (tokens after the first, per second).
 */
async function generate(device, prompt, { maxNewTokens = 40, onText = null } = {}) {
    const { tokenizer, model, loadSeconds } = await load(device);
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
    const newIds = Array.from(out.data, Number).slice(promptIds.length);
    const n = stamps.length;
    return {
        device,
        promptIds,
        newIds,
        text: tokenizer.decode(newIds, { skip_special_tokens: true }),
        loadSeconds,
        seconds: (end - start) / 1000,
        firstTokenSeconds: n > 0 ? (stamps[0] - start) / 1000 : null,
        tokensPerSecond: n > 1 ? ((n - 1) * 1000) / (stamps[n - 1] - stamps[0]) : null,
    };
}

// For scripts driving the page (tests/web/browser_check.py).
window.bitnet = { load, generate, crossOriginIsolated: window.crossOriginIsolated };

const $ = (id) => document.getElementById(id);
$('generate').addEventListener('click', async () => {
    const button = $('generate');
    button.disabled = true;
    const device = $('device').value;
    const out = $('output');
    out.textContent = $('prompt').value;
    $('status').textContent = `Loading on ${device}...`;
    try {
        const r = await generate(device, $('prompt').value, {
            maxNewTokens: Number($('max-new-tokens').value),
            onText: (t) => {
                out.textContent += t;
                $('status').textContent = `Generating on ${device}...`;
            },
        });
        const speed = r.tokensPerSecond === null ? '' : `, ${r.tokensPerSecond.toFixed(1)} tokens/s`;
        $('status').textContent = `${r.newIds.length} tokens in ${r.seconds.toFixed(2)} s on ${device}${speed}`;
    } catch (e) {
        $('status').textContent = `Error: ${e?.message ?? e}`;
    } finally {
        button.disabled = false;
    }
});
$('status').textContent = `Ready (model folder ${env.localModelPath}${MODEL}/; cross-origin isolated: ${window.crossOriginIsolated}).`;
