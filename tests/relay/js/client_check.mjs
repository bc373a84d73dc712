// Drives api/static/cloudops-events.js under Node (>= 20 with --experimental-websocket) for
// tests/relay/test_js_client.py. Prints one JSON object per line on stdout.
//   node client_check.mjs <module url> <base url> <token> api
//   node client_check.mjs <module url> <base url> <token> follow <executionId>
const [, , moduleUrl, baseUrl, token, mode, executionId] = process.argv;
const events = await import(moduleUrl);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const fail = (msg) => {
  out({ ok: false, error: msg });
  process.exit(1);
};
setTimeout(() => fail("timed out"), 60000).unref();

const client = events.connect({ baseUrl, token, onError: (e) => out({ onError: String(e) }) });

async function submit(command) {
  const res = await fetch(new URL("/api/executions", baseUrl), {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ command, commandType: "script" }),
  });
  if (res.status !== 202) fail(`submit: HTTP ${res.status}`);
  return (await res.json()).executionId;
}

if (mode === "api") {
  const completed = new Set();
  const waiters = new Map();
  await events.listen("execution_complete", (e) => {
    completed.add(e.payload.executionId);
    const w = waiters.get(e.payload.executionId);
    if (w) w();
  });
  const completion = (ex) =>
    completed.has(ex) ? Promise.resolve() : new Promise((r) => waiters.set(ex, r));

  const outputs = [];
  const unlisten = await events.listen("execution_output", (e) => outputs.push(e));
  const a = await submit("lines=3");
  await completion(a);
  const ofA = outputs.filter((e) => e.payload.executionId === a);
  out({ step: "listen", events: ofA });

  unlisten();
  const b = await submit("lines=2");
  await completion(b);
  out({ step: "unlisten", delivered: outputs.filter((e) => e.payload.executionId === b).length });

  let onceCount = 0;
  await events.once("execution_output", () => onceCount++);
  const c = await submit("lines=3");
  await completion(c);
  out({ step: "once", count: onceCount });

  // follow() replays a finished execution's history from the start.
  const replayed = [];
  const un2 = await client.listen("execution_started", (e) => replayed.push(e));
  const d = await submit("lines=1");
  await completion(d);
  un2();
  out({ step: "started", ids: replayed.filter((e) => e.payload.executionId === d).map((e) => e.id) });
  client.close();

  // A client connected after an execution ended replays it with follow().
  const late = events.connect({ baseUrl, token });
  const replay = [];
  let done;
  const ended = new Promise((r) => (done = r));
  await late.listen("execution_output", (e) => replay.push(e.id));
  await late.listen("execution_complete", (e) => e.payload.executionId === a && done());
  await late.follow(a, { after: 1 });
  await ended;
  out({ step: "replay", ids: replay });
  late.close();
  out({ ok: true });
  process.exit(0);
}

if (mode === "follow") {
  const print = (e) => out({ id: e.id, event: e.event, payload: e.payload });
  await events.listen("execution_output", print);
  await events.listen("playbook_host_start", print);
  await events.listen("playbook_host_complete", print);
  await events.listen("execution_complete", (e) => {
    out({ id: e.id, event: e.event, payload: e.payload });
    client.close();
    out({ ok: true });
    process.exit(0);
  });
  await client.follow(executionId, { after: 0 });
  out({ ready: true });
}
