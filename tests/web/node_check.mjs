// The Node example (examples/node/generate.mjs) against transformers' greedy tokens.
//
//   node tests/web/node_check.mjs MODEL_DIR EXPECTED_JSON
//
// For every prompt of EXPECTED_JSON (samples/checkpoints/expected/<form>.json): the example's
// generate() (Transformers.js on onnxruntime-node's CPU kernels) judged as
// tests/web/compare.py judges (equal up to transformers' first top-two margin <= 0.1), and
// the text-generation pipeline, whose BOS comes from the folder's add_bos_token, must give
// the text of transformers' tokens (decoded as the pipeline decodes, which must match
// transformers' own decoding up to a leading space). Prints JSON; exit 0 when all agree, 1 when not,
// 2 when it could not run.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Transformers.js as examples/ installs it (`npm ci` there): the module the example imports.
const here = path.dirname(fileURLToPath(import.meta.url));
const examples = path.join(here, '..', '..', 'examples');
const { load, generate } = await import(path.join(examples, 'node', 'generate.mjs'));
const { pipeline } = await import(
    path.join(examples, 'node_modules', '@huggingface', 'transformers', 'dist', 'transformers.node.mjs')
);

const MARGIN = 0.1;

function judge(p, promptIds, newIds) {
    const want = p.new_tokens;
    let must = p.step_margins.findIndex((m) => m <= MARGIN);
    if (must < 0) must = want.length;
    let same = 0;
    while (same < Math.min(newIds.length, want.length) && newIds[same] === want[same]) same++;
    const idsMatch = JSON.stringify(promptIds) === JSON.stringify(p.input_ids);
    return { text: p.text, prompt_ids_match: idsMatch, agree: same, of: want.length, must_agree: must, ok: idsMatch && same >= must, new_tokens: newIds };
}

async function main() {
    const [modelDir, expectedPath] = process.argv.slice(2);
    if (!modelDir || !expectedPath) {
        console.error('usage: node node_check.mjs MODEL_DIR EXPECTED_JSON');
        return 2;
    }
    const expected = JSON.parse(fs.readFileSync(expectedPath, 'utf8'));
    const t0 = performance.now();
    const loaded = await load(modelDir);
    const loadSeconds = (performance.now() - t0) / 1000;
    const prompts = [];
    const speeds = [];
    for (const p of expected.prompts) {
        const r = await generate(loaded, p.text, { maxNewTokens: p.new_tokens.length });
        const j = judge(p, r.promptIds, r.newIds);
        j.tokens_per_second = r.tokensPerSecond;
        speeds.push(r.tokensPerSecond);
        prompts.push(j);
    }
    // The pipeline adds special tokens only when tokenizer_config.json sets add_bos_token.
    const generator = await pipeline('text-generation', path.resolve(modelDir));
    const pipelineTexts = [];
    for (const [i, p] of expected.prompts.entries()) {
        const [out] = await generator(p.text, { max_new_tokens: p.new_tokens.length, do_sample: false, return_full_text: false });
        // The pipeline's text is decode(prompt + new)[len(decode(prompt)):] (transformers'
        // pipeline does the same), so the reference is transformers' tokens decoded that way.
        // transformers' `continuation` is decode(new) alone, which drops the leading space a
        // Metaspace tokenizer (Llama 2's layout) keeps in the pipeline's text: the two may
        // differ by that space only.
        const tok = generator.tokenizer;
        const promptText = tok.decode(p.input_ids, { skip_special_tokens: true });
        const want = tok.decode([...p.input_ids, ...p.new_tokens], { skip_special_tokens: true }).slice(promptText.length);
        const decodes = want.trimStart() === p.continuation.trimStart();
        const ok = decodes && (!prompts[i].ok || prompts[i].agree < p.new_tokens.length || out.generated_text === want);
        pipelineTexts.push({ text: p.text, ok, generated_text: out.generated_text, want, transformers_continuation: p.continuation });
    }
    speeds.sort((a, b) => a - b);
    const result = {
        model: modelDir,
        runtime: 'onnxruntime-node (Transformers.js in Node)',
        load_seconds: loadSeconds,
        tokens_per_second_median: speeds[Math.floor(speeds.length / 2)],
        ok: prompts.every((p) => p.ok) && pipelineTexts.every((p) => p.ok),
        prompts,
        pipeline: pipelineTexts,
    };
    console.log(JSON.stringify(result, null, 1));
    return result.ok ? 0 : 1;
}

main().then(
    (code) => process.exit(code),
    (e) => {
        console.error(`error: ${e?.stack ?? e}`);
        process.exit(2);
    },
);
