/**
 * The language client's middleware: gates inline and list completions on the user's
 * toggle, debounces automatic inline requests, and feeds `$/progress` to the status.
 * Requests themselves are sent by vscode-languageclient (`textDocument/inlineCompletion`,
 * `textDocument/completion`), so their params are the library's.
 */
import * as vscode from 'vscode';
import type { Middleware } from 'vscode-languageclient/node';
import { type ExtensionConfig, offerCompletionList } from './settings';
import type { ProgressValue } from './status';

export interface Host {
  config(): ExtensionConfig;
  /** `editor.inlineSuggest.enabled` for the document. */
  inlineSuggestEnabled(document: vscode.TextDocument): boolean;
  progress(value: ProgressValue): void;
}

/** Resolves true after `ms`, or false as soon as the request is cancelled. */
export function settle(ms: number, token: vscode.CancellationToken): Promise<boolean> {
  if (token.isCancellationRequested) return Promise.resolve(false);
  if (ms <= 0) return Promise.resolve(true);
  return new Promise((resolve) => {
    const sub = token.onCancellationRequested(() => {
      clearTimeout(timer);
      sub.dispose();
      resolve(false);
    });
    const timer = setTimeout(() => {
      sub.dispose();
      resolve(!token.isCancellationRequested);
    }, ms);
  });
}

export function middleware(host: Host): Middleware {
  return {
    async provideInlineCompletionItems(document, position, context, token, next) {
      const config = host.config();
      if (!config.enable) return null;
      // Typing fires a request per keystroke and VS Code cancels the previous one: wait
      // for a pause so the server decodes only where the user stopped.
      if (context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic) {
        if (!(await settle(config.debounceMs, token))) return null;
      }
      return next(document, position, context, token);
    },
    provideCompletionItem(document, position, context, token, next) {
      const config = host.config();
      const offer = offerCompletionList(config.completionList, {
        enabled: config.enable,
        inlineSuggestEnabled: host.inlineSuggestEnabled(document),
        invoked: context.triggerKind === vscode.CompletionTriggerKind.Invoke,
      });
      return offer ? next(document, position, context, token) : null;
    },
    handleWorkDoneProgress(_token, params, next) {
      host.progress(params);
      next(_token, params);
    },
  };
}
