/**
 * Finding the `tessera` binary: the configured path, then PATH, then the workspace's
 * `target/release`. `findServer` is pure (the file test is injected).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface Lookup {
  /** `tessera.serverPath` (may use `~` and `${workspaceFolder}`). */
  configured: string;
  /** The PATH of the extension host. */
  pathEnv: string | undefined;
  workspaceFolders: string[];
  home: string;
  platform: NodeJS.Platform;
  isExecutable: (file: string) => boolean;
}

export type Found = { path: string; source: 'setting' | 'PATH' | 'workspace' };

export class ServerNotFound extends Error {
  constructor(
    message: string,
    readonly looked: string[],
  ) {
    super(message);
  }
}

/** Expands `~` and `${workspaceFolder}` in a configured path. */
export function expandPath(p: string, home: string, workspaceFolder: string | undefined): string {
  let out = p.replace(/\$\{workspaceFolder\}/g, workspaceFolder ?? '');
  if (out === '~' || out.startsWith('~/')) out = path.join(home, out.slice(1));
  return out;
}

export function findServer(l: Lookup): Found {
  const exe = l.platform === 'win32' ? 'tessera.exe' : 'tessera';
  if (l.configured) {
    let p = expandPath(l.configured, l.home, l.workspaceFolders[0]);
    if (!path.isAbsolute(p) && l.workspaceFolders[0]) p = path.join(l.workspaceFolders[0], p);
    if (l.isExecutable(p)) return { path: p, source: 'setting' };
    throw new ServerNotFound(`tessera.serverPath ${p} is not an executable file`, [p]);
  }
  const looked: string[] = [];
  const sep = l.platform === 'win32' ? ';' : ':';
  for (const dir of (l.pathEnv ?? '').split(sep)) {
    if (!dir) continue;
    const p = path.join(dir, exe);
    looked.push(p);
    if (l.isExecutable(p)) return { path: p, source: 'PATH' };
  }
  for (const folder of l.workspaceFolders) {
    const p = path.join(folder, 'target', 'release', exe);
    looked.push(p);
    if (l.isExecutable(p)) return { path: p, source: 'workspace' };
  }
  throw new ServerNotFound(
    'cannot find the tessera binary: set tessera.serverPath, put tessera on PATH, or run `cargo build --release` in the workspace',
    looked,
  );
}

/** The command line of the server: `tessera lsp`, logs on stderr. */
export function serverCommand(
  binary: string,
  env: Record<string, string>,
  baseEnv: NodeJS.ProcessEnv = process.env,
): { command: string; args: string[]; options: { env: NodeJS.ProcessEnv } } {
  return { command: binary, args: ['lsp'], options: { env: { ...baseEnv, ...env } } };
}

/** A file the extension host may run. */
export function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}
