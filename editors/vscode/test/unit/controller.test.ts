/**
 * The extension wired to the stubbed `vscode` API and a fake language client: the status
 * bar, the commands, settings reaching the server, and the middleware's gating.
 */
import '../install-stub';
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import type { LanguageClientOptions, ServerOptions } from 'vscode-languageclient/node';
import { type ClientLike, Controller } from '../../src/controller';
import { CancellationTokenSource, CompletionTriggerKind, EventEmitter, InlineCompletionTriggerKind, fake } from '../vscode-stub';

class FakeClient implements ClientLike {
  started = 0;
  stopped = 0;
  running = false;
  notifications: { method: string; params: unknown }[] = [];
  private states = new EventEmitter<{ oldState: number; newState: number }>();
  onDidChangeState = this.states.event as unknown as ClientLike['onDidChangeState'];
  constructor(
    readonly server: ServerOptions,
    readonly options: LanguageClientOptions,
  ) {}
  async start() {
    this.started++;
    this.states.fire({ oldState: 1, newState: 3 });
    this.running = true;
    this.states.fire({ oldState: 3, newState: 2 });
  }
  async stop() {
    this.stopped++;
    this.running = false;
    this.states.fire({ oldState: 2, newState: 1 });
  }
  async restart() {
    await this.stop();
    await this.start();
  }
  isRunning() {
    return this.running;
  }
  async sendNotification(method: string, params: unknown) {
    this.notifications.push({ method, params });
  }
}

let dir: string;
let clients: FakeClient[];
let controller: Controller;

function binary(): string {
  const p = path.join(dir, 'tessera');
  fs.writeFileSync(p, '#!/bin/sh\n', { mode: 0o755 });
  return p;
}

function make(): Controller {
  controller = new Controller((server, options) => {
    const c = new FakeClient(server, options);
    clients.push(c);
    return c;
  });
  return controller;
}

const item = () => fake.statusItems[fake.statusItems.length - 1];
const doc = {} as never;
const pos = {} as never;

beforeEach(() => {
  fake.reset();
  clients = [];
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-vscode-'));
});

afterEach(async () => {
  await controller?.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('starts `tessera lsp` with the settings as initializationOptions and shows loading, then ready', async () => {
  const bin = binary();
  fake.settings.set('tessera.serverPath', bin);
  fake.settings.set('tessera.model', 'smollm2-135m');
  fake.settings.set('tessera.beams', 2);
  const c = make();
  await c.start();
  assert.equal(clients.length, 1);
  const client = clients[0];
  const run = (client.server as { run: { command: string; args: string[] } }).run;
  assert.equal(run.command, bin);
  assert.deepEqual(run.args, ['lsp']);
  const init = (client.options.initializationOptions as () => { tessera: Record<string, unknown> })();
  assert.equal(init.tessera.model, 'smollm2-135m');
  assert.equal(init.tessera.beams, 2);
  assert.equal(init.tessera.alternatives, null);
  assert.deepEqual(client.options.documentSelector, [{ scheme: 'file' }, { scheme: 'untitled' }]);
  assert.match(item().text, /loading~spin/);
  assert.ok(item().visible);
  assert.equal(item().command, 'tessera.statusMenu');

  const mw = client.options.middleware!;
  const seen: unknown[] = [];
  mw.handleWorkDoneProgress!('t', { kind: 'begin', title: 'Tessera', message: 'loading model smollm2-135m' }, (_t, p) => seen.push(p));
  assert.match(String(item().tooltip), /loading model smollm2-135m/);
  mw.handleWorkDoneProgress!('t', { kind: 'end', message: 'ready: local:smollm2-135m (template plain)' }, (_t, p) => seen.push(p));
  assert.match(item().text, /sparkle/);
  assert.equal(seen.length, 2, 'progress still reaches VS Code');
  mw.handleWorkDoneProgress!('u', { kind: 'end', message: 'cannot load model x: no such file' }, () => {});
  assert.match(item().text, /error/);
  assert.equal((item().backgroundColor as { id: string }).id, 'statusBarItem.errorBackground');
});

test('a missing binary is an error in the status bar and a message, with no client', async () => {
  fake.settings.set('tessera.serverPath', path.join(dir, 'nope'));
  const c = make();
  await c.start();
  assert.equal(clients.length, 0);
  assert.match(item().text, /error/);
  assert.match(String(item().tooltip), /is not an executable file/);
  assert.match(fake.errors[0], /^Tessera: tessera.serverPath/);
});

test('settings reach the running server as didChangeConfiguration; a new environment restarts it', async () => {
  fake.settings.set('tessera.serverPath', binary());
  const c = make();
  await c.start();
  fake.settings.set('tessera.beams', 4);
  await c.configurationChanged();
  assert.equal(clients.length, 1, 'no restart for a server setting');
  assert.deepEqual(clients[0].notifications.map((n) => n.method), ['workspace/didChangeConfiguration']);
  const sent = clients[0].notifications[0].params as { settings: { tessera: Record<string, unknown> } };
  assert.equal(sent.settings.tessera.beams, 4);
  fake.settings.set('tessera.debounceMs', 10);
  await c.configurationChanged();
  assert.equal(clients[0].notifications.length, 1, 'extension-only settings are not sent');
  fake.settings.set('tessera.serverEnv', { TESSERA_LOG: 'debug' });
  await c.configurationChanged();
  assert.equal(clients[0].stopped, 1);
  assert.equal(clients.length, 2);
  const env = (clients[1].server as { run: { options: { env: Record<string, string> } } }).run.options.env;
  assert.equal(env.TESSERA_LOG, 'debug');
});

test('toggle disables inline and list completions and shows it; debounce waits and cancels', async () => {
  fake.settings.set('tessera.serverPath', binary());
  fake.settings.set('tessera.debounceMs', 20);
  const c = make();
  await c.start();
  const mw = clients[0].options.middleware!;
  let asked = 0;
  const next = async () => {
    asked++;
    return [];
  };
  const auto = { triggerKind: InlineCompletionTriggerKind.Automatic, selectedCompletionInfo: undefined } as never;
  const invoke = { triggerKind: InlineCompletionTriggerKind.Invoke, selectedCompletionInfo: undefined } as never;

  const live = new CancellationTokenSource();
  assert.deepEqual(await mw.provideInlineCompletionItems!(doc, pos, auto, live.token as never, next), []);
  assert.equal(asked, 1);
  const typedOn = new CancellationTokenSource();
  const pending = mw.provideInlineCompletionItems!(doc, pos, auto, typedOn.token, next);
  typedOn.cancel();
  assert.equal(await pending, null);
  assert.equal(asked, 1, 'a request cancelled while debouncing never reaches the server');

  await fake.commands.get('tessera.toggle')!();
  assert.equal(fake.settings.get('tessera.enable'), false);
  await new Promise((r) => setImmediate(r));
  assert.match(item().text, /circle-slash/);
  assert.equal(await mw.provideInlineCompletionItems!(doc, pos, invoke, live.token as never, next), null);
  const list = { triggerKind: CompletionTriggerKind.Invoke } as never;
  assert.equal(await mw.provideCompletionItem!(doc, pos, list, live.token as never, next as never), null);
  assert.equal(asked, 1);

  await fake.commands.get('tessera.toggle')!();
  await new Promise((r) => setImmediate(r));
  assert.doesNotMatch(item().text, /circle-slash/);
  await mw.provideInlineCompletionItems!(doc, pos, invoke, live.token, next);
  assert.equal(asked, 2);
});

test('completion list: in auto only on Ctrl+Space or with inline suggestions off', async () => {
  fake.settings.set('tessera.serverPath', binary());
  const c = make();
  await c.start();
  const mw = clients[0].options.middleware!;
  let asked = 0;
  const next = (async () => {
    asked++;
    return [];
  }) as never;
  const token = new CancellationTokenSource().token as never;
  await mw.provideCompletionItem!(doc, pos, { triggerKind: CompletionTriggerKind.TriggerCharacter } as never, token, next);
  assert.equal(asked, 0);
  await mw.provideCompletionItem!(doc, pos, { triggerKind: CompletionTriggerKind.Invoke } as never, token, next);
  assert.equal(asked, 1);
  fake.settings.set('editor.inlineSuggest.enabled', false);
  await mw.provideCompletionItem!(doc, pos, { triggerKind: CompletionTriggerKind.TriggerCharacter } as never, token, next);
  assert.equal(asked, 2);
});

test('pick model offers the fetched models and sends the choice to the server', async () => {
  const home = path.join(dir, 'home');
  for (const [m, f] of [['smollm2-135m', 'model.gguf'], ['whisper-base', 'config.json']]) {
    fs.mkdirSync(path.join(home, 'models', m), { recursive: true });
    fs.writeFileSync(path.join(home, 'models', m, f), '');
  }
  fake.settings.set('tessera.serverPath', binary());
  fake.settings.set('tessera.serverEnv', { TESSERA_HOME: home });
  const c = make();
  await c.start();
  let offered: string[] = [];
  fake.quickPick = (items) => {
    offered = items.map((i) => i.label);
    return items[0];
  };
  await fake.commands.get('tessera.pickModel')!();
  await new Promise((r) => setImmediate(r));
  assert.equal(offered.length, 3);
  assert.equal(offered[0], 'smollm2-135m');
  assert.equal(fake.settings.get('tessera.model'), 'smollm2-135m');
  const sent = clients[0].notifications.at(-1)!.params as { settings: { tessera: Record<string, unknown> } };
  assert.equal(sent.settings.tessera.model, 'smollm2-135m');

  fake.quickPick = (items) => items.find((i) => /Hugging Face/.test(i.label));
  fake.inputBox = () => ' Qwen/Qwen2.5-Coder-0.5B ';
  await fake.commands.get('tessera.pickModel')!();
  assert.equal(fake.settings.get('tessera.model'), 'Qwen/Qwen2.5-Coder-0.5B');
});

test('restart command stops the client and starts a new one', async () => {
  fake.settings.set('tessera.serverPath', binary());
  const c = make();
  await c.start();
  await fake.commands.get('tessera.restart')!();
  assert.equal(clients.length, 2);
  assert.equal(clients[0].stopped, 1);
  assert.equal(clients[1].started, 1);
  assert.match(item().text, /loading~spin/);
});
