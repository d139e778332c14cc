/** Entry point: creates the `Controller` with the real `LanguageClient`. */
import type * as vscode from 'vscode';
import { LanguageClient } from 'vscode-languageclient/node';
import { Controller } from './controller';

let controller: Controller | undefined;

export function activate(context: vscode.ExtensionContext): void {
  controller = new Controller((server, options) => new LanguageClient('tessera', 'Tessera', server, options));
  context.subscriptions.push({ dispose: () => void controller?.dispose() });
  void controller.start();
}

export async function deactivate(): Promise<void> {
  const c = controller;
  controller = undefined;
  await c?.dispose();
}
