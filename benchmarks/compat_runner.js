// Runs exported .onnx files in onnxruntime-node (CPU) or onnxruntime-web (wasm, in node): `node compat_runner.js JOB.json`.
// benchmarks/compat.py writes the job: client ("node" or "web"), the model, the input as raw little-endian values
// (input_bin, input_shape, input_dtype), the batch to feed, seconds to time, threads, and the node_modules folder the
// packages were installed in. It writes the outputs as raw float32 (output_bin) and a result JSON like compat_runner.py.
"use strict";
const fs = require("fs");
const path = require("path");
const { createRequire } = require("module");

const TYPED = { float32: Float32Array, uint8: Uint8Array, int8: Int8Array };

function shortError(error) {
  return `${error && error.name ? error.name : "Error"}: ${String(error && error.message ? error.message : error)
    .split(/\s+/)
    .join(" ")}`.slice(0, 600);
}

async function runJob(job) {
  const result = { loaded: false, ran: false, error: null, version: null, extra: {} };
  let stage = "import";
  try {
    const load = createRequire(path.join(job.node_modules, "noop.js"));
    const pkg = job.client === "web" ? "onnxruntime-web" : "onnxruntime-node";
    result.version = JSON.parse(fs.readFileSync(path.join(job.node_modules, pkg, "package.json"), "utf8")).version;
    const ort = load(pkg);
    const options = { graphOptimizationLevel: "all" };
    if (job.client === "web") {
      ort.env.wasm.numThreads = job.threads;
      options.executionProviders = ["wasm"];
    } else {
      options.executionProviders = ["cpu"];
      options.intraOpNumThreads = job.threads;
    }
    stage = "load";
    let start = performance.now();
    const session = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(job.model)), options);
    result.loaded = true;
    result.load_seconds = (performance.now() - start) / 1000;
    stage = "run";
    const raw = fs.readFileSync(job.input_bin);
    const Typed = TYPED[job.input_dtype];
    const values = new Typed(raw.buffer, raw.byteOffset, raw.length / Typed.BYTES_PER_ELEMENT);
    const [count, ...rest] = job.input_shape;
    const perItem = rest.reduce((a, b) => a * b, 1);
    const batch = job.batch || count;
    const inputName = session.inputNames[0];
    const outputName = session.outputNames[0];
    async function runAll() {
      const outputs = [];
      for (let i = 0; i < count; i += batch) {
        const n = Math.min(batch, count - i);
        const tensor = new ort.Tensor(job.input_dtype, values.slice(i * perItem, (i + n) * perItem), [n, ...rest]);
        const out = await session.run({ [inputName]: tensor });
        outputs.push(Float32Array.from(out[outputName].data));
      }
      return outputs;
    }
    start = performance.now();
    const outputs = await runAll();
    result.first_pass_seconds = (performance.now() - start) / 1000;
    fs.writeFileSync(job.output_bin, Buffer.concat(outputs.map((o) => Buffer.from(o.buffer, o.byteOffset, o.byteLength))));
    result.ran = true;
    result.batch = batch;
    if (result.first_pass_seconds >= job.seconds) {
      result.images_per_sec = count / result.first_pass_seconds; // a slow client: its one pass is the measure
    } else {
      let passes = 0;
      start = performance.now();
      while (passes < 1 || (performance.now() - start < job.seconds * 1000 && passes < 10000)) {
        await runAll();
        passes += 1;
      }
      result.images_per_sec = (passes * count) / ((performance.now() - start) / 1000);
    }
  } catch (error) {
    result.error = shortError(error);
    result.stage = stage;
  }
  fs.writeFileSync(job.result, JSON.stringify(result));
}

// One job, or a list run in turn (each result written as it is known, so a crash loses only its own).
async function main() {
  const jobs = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  for (const job of Array.isArray(jobs) ? jobs : [jobs]) {
    await runJob(job);
  }
  process.exit(0); // the wasm backend's worker threads would keep the process alive
}

main();
