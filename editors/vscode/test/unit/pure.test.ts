/** The extension's pure logic: settings, finding the binary, status, model choices. */
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { test } from 'node:test';
import { modelChoices, settingTarget, tesseraHome } from '../../src/models';
import { ServerNotFound, expandPath, findServer, serverCommand } from '../../src/serverPath';
import {
  SERVER_KEYS,
  didChangeConfigurationParams,
  initializationOptions,
  modelLabel,
  needsRestart,
  offerCompletionList,
  readConfig,
  serverSettingsChanged,
} from '../../src/settings';
import { Status } from '../../src/status';

const config = (values: Record<string, unknown>) => readConfig((k) => values[k]);

test('settings: unset keys go to the server as null, set ones as they are', () => {
  const c = config({ model: 'smollm2-135m', beams: 2, template: '', enabledLanguages: ['python'] });
  const init = initializationOptions(c);
  assert.deepEqual(Object.keys(init.tessera).sort(), [...SERVER_KEYS].sort());
  assert.equal(init.tessera.model, 'smollm2-135m');
  assert.equal(init.tessera.beams, 2);
  assert.equal(init.tessera.template, null, 'an empty string is unset');
  assert.deepEqual(init.tessera.enabledLanguages, ['python']);
  assert.equal(init.tessera.device, null);
  assert.deepEqual(didChangeConfigurationParams(c), { settings: init });
});

test('settings: extension-only keys have defaults and stay out of the server settings', () => {
  const c = config({});
  assert.equal(c.enable, true);
  assert.equal(c.serverPath, '');
  assert.deepEqual(c.serverEnv, {});
  assert.equal(c.debounceMs, 150);
  assert.equal(c.completionList, 'auto');
  assert.equal(modelLabel(c), 'qwen2.5-coder-0.5b');
  assert.equal(config({ enable: false, debounceMs: -3, completionList: 'bogus' }).enable, false);
  assert.equal(config({ debounceMs: -3 }).debounceMs, 150);
  assert.equal(config({ completionList: 'bogus' }).completionList, 'auto');
  assert.deepEqual(config({ serverEnv: { A: 1 } }).serverEnv, {}, 'non-string values are refused');
  assert.ok(!('enable' in initializationOptions(c).tessera));
  assert.equal(modelLabel(config({ backend: 'openai', remoteModel: 'starcoder2-3b' })), 'starcoder2-3b');
});

test('settings: a new binary or environment restarts, server settings do not', () => {
  const a = config({ beams: 2 });
  assert.ok(!needsRestart(a, config({ beams: 3 })));
  assert.ok(serverSettingsChanged(a, config({ beams: 3 })));
  assert.ok(!serverSettingsChanged(a, config({ beams: 2, debounceMs: 10 })));
  assert.ok(needsRestart(a, config({ beams: 2, serverPath: '/x/tessera' })));
  assert.ok(needsRestart(a, config({ beams: 2, serverEnv: { TESSERA_LOG: 'debug' } })));
});

test('completion list: auto only when inline suggestions are off or on Ctrl+Space', () => {
  const base = { enabled: true, inlineSuggestEnabled: true, invoked: false };
  assert.equal(offerCompletionList('auto', base), false);
  assert.equal(offerCompletionList('auto', { ...base, invoked: true }), true);
  assert.equal(offerCompletionList('auto', { ...base, inlineSuggestEnabled: false }), true);
  assert.equal(offerCompletionList('always', base), true);
  assert.equal(offerCompletionList('off', { ...base, invoked: true }), false);
  assert.equal(offerCompletionList('always', { ...base, enabled: false }), false);
});

test('binary: setting, then PATH, then the workspace target/release', () => {
  const executables = new Set(['/opt/bin/tessera', '/ws/target/release/tessera', '/home/u/bin/tessera']);
  const base = {
    configured: '',
    pathEnv: '/usr/bin:/opt/bin',
    workspaceFolders: ['/ws'],
    home: '/home/u',
    platform: 'linux' as const,
    isExecutable: (f: string) => executables.has(f),
  };
  assert.deepEqual(findServer(base), { path: '/opt/bin/tessera', source: 'PATH' });
  assert.deepEqual(findServer({ ...base, pathEnv: '/usr/bin' }), {
    path: '/ws/target/release/tessera',
    source: 'workspace',
  });
  assert.deepEqual(findServer({ ...base, configured: '~/bin/tessera' }), {
    path: '/home/u/bin/tessera',
    source: 'setting',
  });
  assert.deepEqual(findServer({ ...base, configured: 'target/release/tessera' }), {
    path: '/ws/target/release/tessera',
    source: 'setting',
  });
  assert.throws(() => findServer({ ...base, configured: '/nope/tessera' }), /tessera.serverPath \/nope\/tessera/);
  try {
    findServer({ ...base, pathEnv: '/usr/bin', workspaceFolders: [] });
    assert.fail('found a binary that is not there');
  } catch (e) {
    assert.ok(e instanceof ServerNotFound);
    assert.deepEqual(e.looked, ['/usr/bin/tessera']);
    assert.match(e.message, /cargo build --release/);
  }
  assert.equal(expandPath('${workspaceFolder}/t', '/h', '/ws'), '/ws/t');
  const cmd = serverCommand('/opt/bin/tessera', { TESSERA_LOG: 'debug' }, { PATH: '/bin' });
  assert.deepEqual(cmd, { command: '/opt/bin/tessera', args: ['lsp'], options: { env: { PATH: '/bin', TESSERA_LOG: 'debug' } } });
});

test('status: starting, loading from $/progress, ready, error, disabled', () => {
  const s = new Status();
  s.model = 'qwen2.5-coder-0.5b';
  s.starting();
  assert.match(s.view().text, /loading~spin/);
  s.running();
  assert.equal(s.phase, 'loading');
  s.progress({ kind: 'begin', title: 'Tessera', message: 'loading model smollm2-135m' });
  assert.match(s.view().tooltip, /loading model smollm2-135m/);
  s.progress({ kind: 'end', message: 'ready: local:smollm2-135m (template plain)' });
  assert.equal(s.phase, 'ready');
  assert.match(s.view().text, /sparkle/);
  assert.equal(s.view().error, false);
  s.enabled = false;
  assert.match(s.view().text, /circle-slash/);
  assert.equal(s.view().warning, true);
  s.enabled = true;
  s.progress({ kind: 'begin', title: 'Tessera', message: 'loading model nope' });
  s.progress({ kind: 'end', message: 'cannot load model nope: not found' });
  assert.equal(s.phase, 'error');
  assert.equal(s.view().error, true);
  assert.match(s.view().tooltip, /cannot load model nope/);
  s.stopped();
  assert.equal(s.phase, 'error', 'stopping keeps the error that stopped it');
  s.enabled = false;
  assert.equal(s.view().error, true, 'an error shows even when disabled');
});

test('models: fetched code models first, then a file and a repo id', () => {
  const home = tesseraHome({ TESSERA_HOME: '/th' }, '/home/u');
  assert.equal(home, '/th');
  assert.equal(tesseraHome({}, '/home/u'), path.join('/home/u', '.cache', 'tessera'));
  const files = new Set(['/th/models/qwen2.5-coder-0.5b/model.gguf', '/th/models/whisper-base/config.json', '/th/models/hf/config.json']);
  const choices = modelChoices(home, 'qwen2.5-coder-0.5b', {
    list: () => ['whisper-base', 'qwen2.5-coder-0.5b', 'empty', 'hf'],
    exists: (f) => files.has(f),
  });
  assert.deepEqual(
    choices.map((c) => c.value ?? c.ask),
    ['hf', 'qwen2.5-coder-0.5b', 'file', 'repo'],
  );
  assert.match(choices[1].label, /check/);
  const none = modelChoices('/missing', '', {
    list: () => {
      throw new Error('ENOENT');
    },
    exists: () => false,
  });
  assert.deepEqual(none.map((c) => c.ask), ['file', 'repo']);
  assert.equal(settingTarget({ workspaceValue: 'x' }), 'workspace');
  assert.equal(settingTarget({}), 'global');
});
