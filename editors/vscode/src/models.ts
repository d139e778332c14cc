/**
 * The models offered by "Tessera: Pick Model": the ones `scripts/fetch-models` put under
 * `$TESSERA_HOME/models`, plus a file picker and a Hugging Face repo id. Pure apart from
 * the injected directory listing.
 */
import * as path from 'node:path';

export interface ModelChoice {
  label: string;
  description: string;
  /** The value for `tessera.model`; undefined for the entries that ask further. */
  value?: string;
  ask?: 'file' | 'repo';
}

/** Models that are not code completers (speech), never offered. */
const NOT_CODE = /^whisper|^clip/;

export function tesseraHome(env: Record<string, string | undefined>, home: string): string {
  return env.TESSERA_HOME || path.join(home, '.cache', 'tessera');
}

export function modelChoices(
  home: string,
  current: string,
  fs: { list: (dir: string) => string[]; exists: (file: string) => boolean },
): ModelChoice[] {
  const dir = path.join(home, 'models');
  let names: string[] = [];
  try {
    names = fs.list(dir).sort();
  } catch {
    names = [];
  }
  const fetched = names
    .filter((n) => !NOT_CODE.test(n))
    .filter((n) => ['model.gguf', 'config.json'].some((f) => fs.exists(path.join(dir, n, f))))
    .map((n) => ({
      label: n === current ? `$(check) ${n}` : n,
      description: `fetched, ${path.join(dir, n)}`,
      value: n,
    }));
  return [
    ...fetched,
    { label: '$(file) GGUF file or checkpoint folder…', description: 'pick from disk', ask: 'file' },
    { label: '$(cloud) Hugging Face repo id…', description: 'from the local Hugging Face cache', ask: 'repo' },
  ];
}

/** Writes where the user set it: the workspace when it overrides, else the user settings. */
export function settingTarget(inspect: { workspaceValue?: unknown; workspaceFolderValue?: unknown } | undefined):
  | 'workspace'
  | 'global' {
  return inspect && (inspect.workspaceValue !== undefined || inspect.workspaceFolderValue !== undefined)
    ? 'workspace'
    : 'global';
}
