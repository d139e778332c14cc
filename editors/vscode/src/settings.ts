/**
 * The extension's settings (`tessera.*`) and what the server is told of them. Pure: no
 * `vscode` import, so the integration test builds exactly what the extension sends.
 */

/** Keys the server reads from `initializationOptions` / `workspace/didChangeConfiguration`. */
export const SERVER_KEYS = [
  'model',
  'device',
  'backend',
  'endpoint',
  'apiKeyEnv',
  'remoteModel',
  'template',
  'maxTokens',
  'maxTokensMultiLine',
  'beams',
  'alternatives',
  'contextTokens',
  'deadlineMs',
  'enabledLanguages',
  'indexMaxFiles',
] as const;

export type ServerKey = (typeof SERVER_KEYS)[number];

/** The server's settings: `null` means "the server's default". */
export type ServerSettings = Record<ServerKey, unknown>;

export type CompletionListMode = 'auto' | 'always' | 'off';

export interface ExtensionConfig {
  enable: boolean;
  /** Path of the `tessera` binary; empty: PATH, then `target/release/tessera` of the workspace. */
  serverPath: string;
  /** Extra environment of the server process (e.g. `TESSERA_LOG`, `TESSERA_HOME`). */
  serverEnv: Record<string, string>;
  debounceMs: number;
  completionList: CompletionListMode;
  server: ServerSettings;
}

/** Reads a configuration section through `get` (VS Code's `WorkspaceConfiguration.get`). */
export function readConfig(get: (key: string) => unknown): ExtensionConfig {
  const server = {} as ServerSettings;
  for (const key of SERVER_KEYS) {
    server[key] = normalise(get(key));
  }
  const env = get('serverEnv');
  const list = get('completionList');
  const debounce = Number(get('debounceMs'));
  return {
    enable: get('enable') !== false,
    serverPath: typeof get('serverPath') === 'string' ? (get('serverPath') as string).trim() : '',
    serverEnv: isStringRecord(env) ? env : {},
    debounceMs: Number.isFinite(debounce) && debounce >= 0 ? debounce : 150,
    completionList: list === 'always' || list === 'off' ? list : 'auto',
    server,
  };
}

/** Unset values and empty strings mean the server's default. */
function normalise(value: unknown): unknown {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string' && value.trim() === '') return null;
  return value;
}

function isStringRecord(v: unknown): v is Record<string, string> {
  return (
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    Object.values(v).every((x) => typeof x === 'string')
  );
}

/** `initializationOptions` of the `initialize` request. */
export function initializationOptions(config: ExtensionConfig): { tessera: ServerSettings } {
  return { tessera: { ...config.server } };
}

/**
 * `workspace/didChangeConfiguration` params. Every key is sent, unset ones as `null`, so a
 * setting the user removed goes back to the server's default.
 */
export function didChangeConfigurationParams(config: ExtensionConfig): {
  settings: { tessera: ServerSettings };
} {
  return { settings: { tessera: { ...config.server } } };
}

/** Whether going from `a` to `b` needs a new server process (settings alone do not). */
export function needsRestart(a: ExtensionConfig, b: ExtensionConfig): boolean {
  return a.serverPath !== b.serverPath || JSON.stringify(a.serverEnv) !== JSON.stringify(b.serverEnv);
}

/** Whether the server settings differ (then they are sent). */
export function serverSettingsChanged(a: ExtensionConfig, b: ExtensionConfig): boolean {
  return JSON.stringify(a.server) !== JSON.stringify(b.server);
}

/** The model shown to the user: the configured one or the server's default. */
export function modelLabel(config: ExtensionConfig): string {
  if (config.server.backend === 'openai') {
    const remote = config.server.remoteModel ?? config.server.model;
    return typeof remote === 'string' ? remote : 'remote model';
  }
  return typeof config.server.model === 'string' ? config.server.model : DEFAULT_MODEL;
}

/** The server's default model (`tessera lsp` without settings). */
export const DEFAULT_MODEL = 'qwen2.5-coder-0.5b';

/**
 * When the completion list asks the server. The server answers one completion per
 * document at a time (a newer request cancels the running one), so in `auto` the list only
 * asks when VS Code shows no inline suggestions or the user invoked it (Ctrl+Space):
 * otherwise every keystroke's list request would cancel the ghost text's.
 */
export function offerCompletionList(
  mode: CompletionListMode,
  opts: { enabled: boolean; inlineSuggestEnabled: boolean; invoked: boolean },
): boolean {
  if (!opts.enabled || mode === 'off') return false;
  if (mode === 'always') return true;
  return !opts.inlineSuggestEnabled || opts.invoked;
}
