/**
 * The extension's state: the language client, the status-bar item, the commands and the
 * settings listener. The client is made by an injected factory, so tests drive all of this
 * with a fake client and the `vscode` API stubbed.
 */
import * as os from 'node:os';
import * as fs from 'node:fs';
import * as vscode from 'vscode';
import type { LanguageClientOptions, ServerOptions, State, StateChangeEvent } from 'vscode-languageclient/node';
import { middleware } from './middleware';
import { modelChoices, settingTarget, tesseraHome } from './models';
import { findServer, isExecutable, serverCommand } from './serverPath';
import {
  type ExtensionConfig,
  didChangeConfigurationParams,
  initializationOptions,
  modelLabel,
  needsRestart,
  readConfig,
  serverSettingsChanged,
} from './settings';
import { Status } from './status';

/** The part of `LanguageClient` the extension uses. */
export interface ClientLike {
  start(): Promise<void>;
  stop(): Promise<void>;
  restart(): Promise<void>;
  isRunning(): boolean;
  sendNotification(method: string, params: unknown): Promise<void>;
  onDidChangeState: vscode.Event<StateChangeEvent>;
}

export type ClientFactory = (server: ServerOptions, options: LanguageClientOptions) => ClientLike;

/** `vscode-languageclient`'s `State` values (a const enum in its typings). */
const STATE_STOPPED = 1 as State;
const STATE_RUNNING = 2 as State;
const STATE_STARTING = 3 as State;

export const SECTION = 'tessera';

export class Controller implements vscode.Disposable {
  readonly status = new Status();
  readonly item: vscode.StatusBarItem;
  readonly output: vscode.LogOutputChannel;
  client: ClientLike | undefined;
  config: ExtensionConfig;
  private disposables: vscode.Disposable[] = [];

  constructor(private readonly createClient: ClientFactory) {
    this.config = this.readConfig();
    this.output = vscode.window.createOutputChannel('Tessera', { log: true });
    this.item = vscode.window.createStatusBarItem('tessera.status', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'Tessera';
    this.item.command = 'tessera.statusMenu';
    this.status.enabled = this.config.enable;
    this.status.model = modelLabel(this.config);
    this.render();
    this.item.show();
    this.disposables.push(
      this.output,
      this.item,
      vscode.commands.registerCommand('tessera.toggle', () => this.toggle()),
      vscode.commands.registerCommand('tessera.restart', () => this.restart()),
      vscode.commands.registerCommand('tessera.pickModel', () => this.pickModel()),
      vscode.commands.registerCommand('tessera.showLog', () => this.output.show(true)),
      vscode.commands.registerCommand('tessera.statusMenu', () => this.statusMenu()),
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (e.affectsConfiguration(SECTION)) void this.configurationChanged();
      }),
    );
  }

  private readConfig(): ExtensionConfig {
    const section = vscode.workspace.getConfiguration(SECTION);
    return readConfig((key) => section.get(key));
  }

  render(): void {
    const view = this.status.view();
    this.item.text = view.text;
    this.item.tooltip = view.tooltip;
    this.item.backgroundColor = view.error
      ? new vscode.ThemeColor('statusBarItem.errorBackground')
      : view.warning
        ? new vscode.ThemeColor('statusBarItem.warningBackground')
        : undefined;
  }

  private workspaceFolders(): string[] {
    return (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === 'file').map((f) => f.uri.fsPath);
  }

  /** Finds the binary and starts the server; failures show in the status bar. */
  async start(): Promise<void> {
    this.status.starting();
    this.render();
    let binary: string;
    try {
      binary = findServer({
        configured: this.config.serverPath,
        pathEnv: process.env.PATH,
        workspaceFolders: this.workspaceFolders(),
        home: os.homedir(),
        platform: process.platform,
        isExecutable,
      }).path;
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      this.fail(message);
      void vscode.window.showErrorMessage(`Tessera: ${message}`, 'Open Settings').then((pick) => {
        if (pick) void vscode.commands.executeCommand('workbench.action.openSettings', 'tessera.serverPath');
      });
      return;
    }
    this.output.appendLine(`starting ${binary} lsp`);
    const run = serverCommand(binary, this.config.serverEnv);
    const server: ServerOptions = { run, debug: run };
    const client = this.createClient(server, this.clientOptions());
    this.client = client;
    this.disposables.push(
      client.onDidChangeState((e) => {
        if (this.client !== client) return;
        if (e.newState === STATE_STARTING) this.status.starting();
        else if (e.newState === STATE_RUNNING) this.status.running();
        else if (e.newState === STATE_STOPPED) this.status.stopped();
        this.render();
      }),
    );
    try {
      await client.start();
    } catch (e) {
      if (this.client === client) this.fail(`the server did not start: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  private fail(message: string): void {
    this.status.failed(message);
    this.output.appendLine(`error: ${message}`);
    this.render();
  }

  clientOptions(): LanguageClientOptions {
    return {
      documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
      // A function: a restarted server gets the settings of the moment.
      initializationOptions: () => initializationOptions(this.config),
      outputChannel: this.output,
      middleware: middleware({
        config: () => this.config,
        inlineSuggestEnabled: (doc) =>
          vscode.workspace.getConfiguration('editor', doc).get<boolean>('inlineSuggest.enabled') !== false,
        progress: (value) => {
          this.status.progress(value);
          this.render();
        },
      }),
      initializationFailedHandler: (error) => {
        this.fail(`initialize failed: ${error instanceof Error ? error.message : String(error)}`);
        return false;
      },
    };
  }

  /** Settings changed: restart for a new binary or environment, else tell the server. */
  async configurationChanged(): Promise<void> {
    const old = this.config;
    this.config = this.readConfig();
    this.status.enabled = this.config.enable;
    this.status.model = modelLabel(this.config);
    this.render();
    if (needsRestart(old, this.config)) {
      await this.restart();
    } else if (serverSettingsChanged(old, this.config) && this.client?.isRunning()) {
      await this.client.sendNotification(
        'workspace/didChangeConfiguration',
        didChangeConfigurationParams(this.config),
      );
    }
  }

  async toggle(): Promise<void> {
    const section = vscode.workspace.getConfiguration(SECTION);
    const target =
      settingTarget(section.inspect('enable')) === 'workspace'
        ? vscode.ConfigurationTarget.Workspace
        : vscode.ConfigurationTarget.Global;
    await section.update('enable', !this.config.enable, target);
  }

  async restart(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client) {
      try {
        await client.stop();
      } catch (e) {
        this.output.appendLine(`stopping the server: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    await this.start();
  }

  async pickModel(): Promise<void> {
    const home = tesseraHome({ ...process.env, ...this.config.serverEnv }, os.homedir());
    const choices = modelChoices(home, modelLabel(this.config), {
      list: (dir) => fs.readdirSync(dir),
      exists: (file) => fs.existsSync(file),
    });
    const pick = await vscode.window.showQuickPick(choices, {
      title: 'Tessera: model for completions',
      placeHolder: `now: ${modelLabel(this.config)}`,
    });
    if (!pick) return;
    let value = pick.value;
    if (pick.ask === 'file') {
      const uris = await vscode.window.showOpenDialog({
        canSelectFiles: true,
        canSelectFolders: true,
        canSelectMany: false,
        openLabel: 'Use this model',
        filters: { 'GGUF model': ['gguf'], 'All files': ['*'] },
      });
      value = uris?.[0]?.fsPath;
    } else if (pick.ask === 'repo') {
      value = await vscode.window.showInputBox({
        title: 'Tessera: Hugging Face repo id',
        placeHolder: 'Qwen/Qwen2.5-Coder-0.5B',
        validateInput: (v) => (/^[\w.-]+\/[\w.-]+$/.test(v.trim()) ? undefined : 'owner/name'),
      });
      value = value?.trim();
    }
    if (!value) return;
    const section = vscode.workspace.getConfiguration(SECTION);
    const target =
      settingTarget(section.inspect('model')) === 'workspace'
        ? vscode.ConfigurationTarget.Workspace
        : vscode.ConfigurationTarget.Global;
    await section.update('model', value, target);
  }

  async statusMenu(): Promise<void> {
    const items = [
      { label: this.config.enable ? '$(circle-slash) Disable completions' : '$(check) Enable completions', command: 'tessera.toggle' },
      { label: '$(symbol-misc) Pick model…', command: 'tessera.pickModel' },
      { label: '$(debug-restart) Restart server', command: 'tessera.restart' },
      { label: '$(output) Show log', command: 'tessera.showLog' },
      { label: '$(gear) Settings', command: 'workbench.action.openSettings', args: ['@ext:tessera.tessera'] },
    ];
    const pick = await vscode.window.showQuickPick(items, { title: this.status.view().tooltip.split('\n')[0] });
    if (pick) await vscode.commands.executeCommand(pick.command, ...(pick.args ?? []));
  }

  async dispose(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    const disposables = this.disposables.splice(0);
    for (const d of disposables) d.dispose();
    if (client?.isRunning()) await client.stop();
  }
}
