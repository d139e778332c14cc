/**
 * The extension's protocol against the real `tessera lsp` and the fetched default model
 * (Qwen2.5-Coder-0.5B): spawned with the extension's command line, initialized with its
 * `initializationOptions`, sent the requests vscode-languageclient sends for VS Code
 * (`textDocument/inlineCompletion` with VS Code's context, `textDocument/completion`,
 * incremental `didChange`, `workspace/didChangeConfiguration` built by the extension), over
 * the same JSON-RPC connection type the client uses. `$/progress` drives the extension's
 * `Status`, as the middleware does.
 *
 * Needs `target/release/tessera` (or `TESSERA_BIN`) and `scripts/fetch-models`.
 */
import { strict as assert } from 'node:assert';
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import {
  CompletionRequest,
  CompletionTriggerKind,
  type CompletionList,
  DidChangeConfigurationNotification,
  DidChangeTextDocumentNotification,
  DidOpenTextDocumentNotification,
  ExitNotification,
  InitializeRequest,
  InitializedNotification,
  InlineCompletionRequest,
  type InlineCompletionList,
  InlineCompletionTriggerKind,
  type InitializeParams,
  type Position,
  type ProtocolConnection,
  ShutdownRequest,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
  createProtocolConnection,
} from 'vscode-languageserver-protocol/node';
import { tesseraHome } from '../../src/models';
import { isExecutable, serverCommand } from '../../src/serverPath';
import { type ExtensionConfig, didChangeConfigurationParams, initializationOptions, readConfig } from '../../src/settings';
import { Status, type ProgressValue } from '../../src/status';

/** Model loading and the first decode on two shared cores take a while; nothing is timed. */
const TIMEOUT = 600_000;

function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'Cargo.toml')) || !fs.existsSync(path.join(dir, 'editors'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no repository root above ${__dirname}`);
    dir = up;
  }
  return dir;
}

const binary = process.env.TESSERA_BIN || path.join(repoRoot(), 'target', 'release', 'tessera');
const home = tesseraHome(process.env, os.homedir());

let proc: ChildProcess;
let conn: ProtocolConnection;
let workspace: string;
let stderr = '';
const status = new Status();
const progress: ProgressValue[] = [];
const logs: string[] = [];
let settings: Record<string, unknown> = {};
let config: ExtensionConfig;
let version = 1;
const text = 'def is_even(n):\n    return \n';
let uri: string;

/** The VS Code settings the user has; the extension reads them with `readConfig`. */
function userConfig(values: Record<string, unknown>): ExtensionConfig {
  settings = values;
  return readConfig((k) => settings[k]);
}

/** Waits until `cond()` holds; the test's own timeout bounds it. */
async function until(what: string, cond: () => boolean): Promise<void> {
  while (!cond()) {
    if (proc.exitCode !== null) throw new Error(`server exited (${proc.exitCode}) while waiting for ${what}:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The params vscode-languageclient's `asInlineCompletionParams` builds. */
function inlineParams(position: Position, triggerKind = InlineCompletionTriggerKind.Automatic) {
  return { textDocument: { uri }, position, context: { triggerKind, selectedCompletionInfo: undefined } };
}

async function inline(position: Position): Promise<InlineCompletionList> {
  const r = await conn.sendRequest(InlineCompletionRequest.type, inlineParams(position));
  assert.ok(r && !Array.isArray(r), 'the server answers an InlineCompletionList');
  return r;
}

before(async () => {
  assert.ok(
    isExecutable(binary),
    `${binary} is missing: build it with \`cargo build --release\` (or set TESSERA_BIN)`,
  );
  assert.ok(
    fs.existsSync(path.join(home, 'models', 'qwen2.5-coder-0.5b', 'model.gguf')),
    `the default model is not fetched under ${home}: run scripts/fetch-models`,
  );
  workspace = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-vscode-it-'));
  const file = path.join(workspace, 'even.py');
  fs.writeFileSync(file, text);
  uri = pathToFileURL(file).toString();

  // What the extension does in `Controller.start`, with the default settings.
  config = userConfig({});
  const cmd = serverCommand(binary, config.serverEnv);
  proc = spawn(cmd.command, cmd.args, { ...cmd.options, cwd: workspace, stdio: ['pipe', 'pipe', 'pipe'] });
  proc.stderr!.on('data', (d) => (stderr += d));
  conn = createProtocolConnection(proc.stdout!, proc.stdin!);
  // As vscode-languageclient's ProgressPart: one handler per token, released at `end`
  // (the server may use a token again for a later load).
  conn.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    const handler = conn.onProgress(WorkDoneProgress.type, token, (value) => {
      progress.push(value);
      status.progress(value);
      if (value.kind === 'end') handler.dispose();
    });
  });
  conn.onNotification('window/logMessage', (p: { message: string }) => {
    logs.push(p.message);
  });
  conn.onNotification('window/showMessage', (p: { message: string }) => {
    logs.push(p.message);
  });
  conn.listen();

  const root = pathToFileURL(workspace).toString();
  const params: InitializeParams = {
    processId: null,
    clientInfo: { name: 'Visual Studio Code', version: '1.91.0' },
    locale: 'en',
    rootPath: workspace,
    rootUri: root,
    capabilities: {
      general: { positionEncodings: ['utf-16'] },
      window: { workDoneProgress: true, showMessage: {} },
      workspace: { configuration: true, workspaceFolders: true, didChangeConfiguration: { dynamicRegistration: true } },
      textDocument: {
        synchronization: { dynamicRegistration: true, didSave: true, willSave: true },
        completion: { dynamicRegistration: true, contextSupport: true, completionItem: { snippetSupport: true } },
        inlineCompletion: { dynamicRegistration: true },
      },
    },
    initializationOptions: initializationOptions(config),
    trace: 'off',
    workspaceFolders: [{ uri: root, name: path.basename(workspace) }],
  };
  status.starting();
  const init = await conn.sendRequest(InitializeRequest.type, params);
  assert.equal(init.capabilities.positionEncoding, 'utf-16');
  assert.ok(init.capabilities.inlineCompletionProvider, 'the server offers inline completions');
  assert.ok(init.capabilities.completionProvider, 'and the completion list');
  assert.equal(
    (init.capabilities.textDocumentSync as { change: number }).change,
    2,
    'incremental sync, as VS Code sends it',
  );
  await conn.sendNotification(InitializedNotification.type, {});
  status.running();
  await conn.sendNotification(DidOpenTextDocumentNotification.type, {
    textDocument: { uri, languageId: 'python', version, text },
  });
});

after(async () => {
  if (conn && proc?.exitCode === null) {
    await conn.sendRequest(ShutdownRequest.type);
    await conn.sendNotification(ExitNotification.type);
    await new Promise((r) => (proc.exitCode === null ? proc.once('exit', r) : r(null)));
    conn.dispose();
  }
  if (workspace) fs.rmSync(workspace, { recursive: true, force: true });
});

test('loading shows in the status from $/progress, then ready with the default model', { timeout: TIMEOUT }, async () => {
  await until('the model to load', () => status.phase !== 'loading' && status.phase !== 'starting');
  assert.equal(status.phase, 'ready', `status: ${status.detail}\n${stderr}`);
  assert.equal(progress[0].kind, 'begin');
  assert.match(String((progress[0] as { message?: string }).message), /loading model qwen2\.5-coder-0\.5b/);
  assert.match(status.detail, /^ready: .*qwen2\.5-coder-0\.5b/);
  assert.match(status.view().text, /sparkle/);
});

test('inline completion, alternatives, then typing along one word (partial accept)', { timeout: TIMEOUT }, async () => {
  const position = { line: 1, character: 11 };
  const list = await inline(position);
  assert.ok(list.items.length >= 1, `no items: ${stderr}`);
  const first = list.items[0];
  assert.equal(typeof first.insertText, 'string');
  assert.ok(
    (first.insertText as string).startsWith('n % 2 == 0'),
    `first completion: ${JSON.stringify(first.insertText)}`,
  );
  assert.deepEqual(first.range?.start, position, 'the range starts at the cursor');
  assert.equal(first.range?.start.line, first.range?.end.line, 'VS Code needs a single-line range');
  const texts = list.items.map((i) => i.insertText as string);
  assert.equal(new Set(texts).size, texts.length, `alternatives are distinct: ${JSON.stringify(texts)}`);

  // Accepting the next word inserts `n`; VS Code sends the edit incrementally and asks again.
  version++;
  await conn.sendNotification(DidChangeTextDocumentNotification.type, {
    textDocument: { uri, version },
    contentChanges: [{ range: { start: position, end: position }, rangeLength: 0, text: 'n' }],
  });
  const after = await inline({ line: 1, character: 12 });
  assert.ok(after.items.length >= 1);
  assert.ok(
    (after.items[0].insertText as string).startsWith(' % 2 == 0'),
    `after typing n: ${JSON.stringify(after.items[0].insertText)}`,
  );
});

test('the completion list gives the same completion as an edit of the word', { timeout: TIMEOUT }, async () => {
  const r = (await conn.sendRequest(CompletionRequest.type, {
    textDocument: { uri },
    position: { line: 1, character: 12 },
    context: { triggerKind: CompletionTriggerKind.Invoked },
  })) as CompletionList;
  assert.ok(r.items.length >= 1);
  const edit = r.items[0].textEdit as { newText: string; range: { start: Position } };
  assert.ok(edit.newText.startsWith('n % 2 == 0'), `list item: ${JSON.stringify(edit.newText)}`);
  assert.deepEqual(edit.range.start, { line: 1, character: 11 });
  assert.equal(r.items[0].label, edit.newText.split('\n')[0]);
});

test('settings changes reach the server without a restart', { timeout: TIMEOUT }, async () => {
  const pid = proc.pid;
  config = userConfig({ enabledLanguages: ['rust'] });
  await conn.sendNotification(DidChangeConfigurationNotification.type, didChangeConfigurationParams(config));
  const off = await inline({ line: 1, character: 12 });
  assert.deepEqual(off.items, [], 'python is no longer completed');

  // Removing the setting sends null, the server's default (all languages) again.
  config = userConfig({});
  await conn.sendNotification(DidChangeConfigurationNotification.type, didChangeConfigurationParams(config));
  const on = await inline({ line: 1, character: 12 });
  assert.ok(on.items.length >= 1);

  // A new model loads in the same process, with $/progress again.
  const before = progress.length;
  config = userConfig({ model: 'smollm2-135m' });
  await conn.sendNotification(DidChangeConfigurationNotification.type, didChangeConfigurationParams(config));
  await until('the new model to load', () => progress.slice(before).some((p) => p.kind === 'end'));
  assert.equal(progress[before].kind, 'begin');
  assert.match(String((progress[before] as { message?: string }).message), /smollm2-135m/);
  assert.equal(status.phase, 'ready', status.detail);
  assert.match(status.detail, /smollm2-135m/);
  assert.equal(proc.pid, pid);
  assert.equal(proc.exitCode, null);
});
