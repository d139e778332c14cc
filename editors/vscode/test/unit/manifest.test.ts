/** package.json declares what the code uses: settings, commands, the entry point. */
import '../install-stub';
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { SERVER_KEYS } from '../../src/settings';
import { fake } from '../vscode-stub';
import { Controller } from '../../src/controller';

const root = path.join(__dirname, '..', '..', '..');
const manifest = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as {
  main: string;
  contributes: {
    configuration: { properties: Record<string, { default?: unknown }> };
    commands: { command: string }[];
  };
};

test('every server setting is a tessera.* setting defaulting to the server default (null)', () => {
  const props = manifest.contributes.configuration.properties;
  for (const key of SERVER_KEYS) {
    assert.ok(props[`tessera.${key}`], `tessera.${key} is not declared`);
    assert.equal(props[`tessera.${key}`].default, null, `tessera.${key} must default to null`);
  }
  for (const key of ['enable', 'serverPath', 'serverEnv', 'debounceMs', 'completionList', 'trace.server']) {
    assert.ok(props[`tessera.${key}`], `tessera.${key} is not declared`);
  }
});

test('the commands the extension registers are the ones declared', async () => {
  fake.reset();
  const c = new Controller(() => {
    throw new Error('not started here');
  });
  const registered = [...fake.commands.keys()].sort();
  await c.dispose();
  assert.deepEqual(registered, manifest.contributes.commands.map((c) => c.command).sort());
});

test('the entry point is what tsc builds', () => {
  assert.equal(manifest.main, './out/src/extension.js');
  assert.ok(fs.existsSync(path.join(root, 'out', 'src', 'extension.js')));
});
