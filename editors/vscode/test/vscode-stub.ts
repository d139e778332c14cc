/**
 * The slice of the `vscode` API the extension touches, for tests outside VS Code. Only what
 * cannot exist without VS Code is faked here (windows, settings store, commands); the
 * extension's own logic runs unchanged. `require('vscode')` resolves to this module once
 * `installVscodeStub()` ran.
 */
import Module from 'node:module';

type Listener<T> = (e: T) => unknown;

export class EventEmitter<T> {
  private listeners = new Set<Listener<T>>();
  event = (listener: Listener<T>) => {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  };
  fire(e: T): void {
    for (const l of [...this.listeners]) l(e);
  }
  dispose(): void {
    this.listeners.clear();
  }
}

export class CancellationTokenSource {
  private emitter = new EventEmitter<void>();
  token = {
    isCancellationRequested: false,
    onCancellationRequested: this.emitter.event,
  };
  cancel(): void {
    if (!this.token.isCancellationRequested) {
      this.token.isCancellationRequested = true;
      this.emitter.fire();
    }
  }
}

export class ThemeColor {
  constructor(readonly id: string) {}
}

export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}
export enum ConfigurationTarget {
  Global = 1,
  Workspace = 2,
  WorkspaceFolder = 3,
}
export enum InlineCompletionTriggerKind {
  Invoke = 0,
  Automatic = 1,
}
export enum CompletionTriggerKind {
  Invoke = 0,
  TriggerCharacter = 1,
  TriggerForIncompleteCompletions = 2,
}

export interface FakeStatusBarItem {
  id: string;
  name?: string;
  text: string;
  tooltip?: string;
  command?: string;
  backgroundColor?: ThemeColor;
  visible: boolean;
  show(): void;
  hide(): void;
  dispose(): void;
}

/** Everything the tests look at or script. */
export const fake = {
  settings: new Map<string, unknown>(),
  workspaceSettings: new Map<string, unknown>(),
  statusItems: [] as FakeStatusBarItem[],
  commands: new Map<string, (...args: unknown[]) => unknown>(),
  executed: [] as { command: string; args: unknown[] }[],
  errors: [] as string[],
  log: [] as string[],
  quickPick: undefined as undefined | ((items: readonly { label: string }[]) => unknown),
  inputBox: undefined as undefined | (() => string | undefined),
  openDialog: undefined as undefined | (() => { fsPath: string }[] | undefined),
  workspaceFolders: [] as { uri: { scheme: string; fsPath: string } }[],
  configEvents: new EventEmitter<{ affectsConfiguration(section: string): boolean }>(),
  reset(): void {
    this.settings.clear();
    this.workspaceSettings.clear();
    this.statusItems.length = 0;
    this.commands.clear();
    this.executed.length = 0;
    this.errors.length = 0;
    this.log.length = 0;
    this.quickPick = undefined;
    this.inputBox = undefined;
    this.openDialog = undefined;
    this.workspaceFolders = [];
  },
};

function configuration(section: string) {
  const key = (k: string) => (section ? `${section}.${k}` : k);
  return {
    get<T>(k: string, dflt?: T): T | undefined {
      const full = key(k);
      if (fake.workspaceSettings.has(full)) return fake.workspaceSettings.get(full) as T;
      if (fake.settings.has(full)) return fake.settings.get(full) as T;
      return dflt;
    },
    inspect(k: string) {
      const full = key(k);
      return {
        key: full,
        globalValue: fake.settings.get(full),
        workspaceValue: fake.workspaceSettings.get(full),
      };
    },
    async update(k: string, value: unknown, target: ConfigurationTarget) {
      const full = key(k);
      (target === ConfigurationTarget.Global ? fake.settings : fake.workspaceSettings).set(full, value);
      fake.configEvents.fire({ affectsConfiguration: (s: string) => full === s || full.startsWith(`${s}.`) });
    },
  };
}

export const workspace = {
  getConfiguration: (section = '') => configuration(section),
  onDidChangeConfiguration: fake.configEvents.event,
  get workspaceFolders() {
    return fake.workspaceFolders;
  },
};

export const window = {
  createStatusBarItem(id: string): FakeStatusBarItem {
    const item: FakeStatusBarItem = {
      id,
      text: '',
      visible: false,
      show() {
        item.visible = true;
      },
      hide() {
        item.visible = false;
      },
      dispose() {
        item.visible = false;
      },
    };
    fake.statusItems.push(item);
    return item;
  },
  createOutputChannel(name: string) {
    const line = (s: string) => fake.log.push(s);
    return { name, appendLine: line, append: line, info: line, warn: line, error: line, debug: line, trace: line, show() {}, dispose() {} };
  },
  async showErrorMessage(message: string) {
    fake.errors.push(message);
    return undefined;
  },
  async showQuickPick(items: readonly { label: string }[]) {
    return fake.quickPick?.(items);
  },
  async showInputBox() {
    return fake.inputBox?.();
  },
  async showOpenDialog() {
    return fake.openDialog?.();
  },
};

export const commands = {
  registerCommand(id: string, fn: (...args: unknown[]) => unknown) {
    fake.commands.set(id, fn);
    return { dispose: () => fake.commands.delete(id) };
  },
  async executeCommand(command: string, ...args: unknown[]) {
    fake.executed.push({ command, args });
    return fake.commands.get(command)?.(...args);
  },
};

let installed = false;

/** Makes `require('vscode')` return this module. */
export function installVscodeStub(): typeof fake {
  if (!installed) {
    const M = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
    const load = M._load;
    M._load = function (this: unknown, request: string, ...rest: unknown[]) {
      if (request === 'vscode') return module.exports;
      return load.call(this, request, ...rest);
    };
    installed = true;
  }
  return fake;
}
