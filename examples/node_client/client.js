// A Node.js client for meshserve (or Triton): ServerReady, then ModelInfer on the example model
// `simple` (OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, 16 INT32 each).
//
//   npm install && node client.js [host:port]        (default localhost:8001, or $MESHSERVE_GRPC_URL)
//
// The stubs are built at run time from the repository's protos/ by @grpc/proto-loader; nothing is
// generated ahead of time.  Prints one JSON line with what it got; exits 0 when the sums check out.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const DEADLINE_MS = 10000;

function loadService() {
  const definition = protoLoader.loadSync("meshserve/pb/grpc_service.proto", {
    includeDirs: [PROTOS],
    keepCase: true, // field names as in the .proto (model_name, raw_input_contents)
    longs: String,
    enums: String,
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition).inference.GRPCInferenceService;
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function int32Buffer(values) {
  const buffer = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buffer.writeInt32LE(v, i * 4));
  return buffer;
}

function int32Values(buffer) {
  const out = [];
  for (let i = 0; i + 4 <= buffer.length; i += 4) out.push(buffer.readInt32LE(i));
  return out;
}

async function main() {
  const url = process.argv[2] || process.env.MESHSERVE_GRPC_URL || "localhost:8001";
  const Service = loadService();
  const client = new Service(url, grpc.credentials.createInsecure());
  try {
    const ready = await call(client, "ServerReady", {});
    const a = Array.from({ length: 16 }, (_, i) => i);
    const b = Array.from({ length: 16 }, () => 1);
    const response = await call(client, "ModelInfer", {
      model_name: "simple",
      id: "node-1",
      inputs: [
        { name: "INPUT0", datatype: "INT32", shape: [1, 16] },
        { name: "INPUT1", datatype: "INT32", shape: [1, 16] },
      ],
      outputs: [{ name: "OUTPUT0" }, { name: "OUTPUT1" }],
      raw_input_contents: [int32Buffer(a), int32Buffer(b)],
    });
    const outputs = {};
    response.outputs.forEach((tensor, i) => {
      outputs[tensor.name] = int32Values(response.raw_output_contents[i]);
    });
    const ok =
      JSON.stringify(outputs.OUTPUT0) === JSON.stringify(a.map((v, i) => v + b[i])) &&
      JSON.stringify(outputs.OUTPUT1) === JSON.stringify(a.map((v, i) => v - b[i]));
    console.log(
      JSON.stringify({
        ready: ready.ready,
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        outputs,
        ok,
      })
    );
    process.exitCode = ready.ready && ok ? 0 : 1;
  } catch (err) {
    console.error(`meshserve node client: ${err.code !== undefined ? `gRPC status ${err.code}: ` : ""}${err.details || err.message}`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

main();
