/**
 * What the status-bar item shows, as a small state machine fed by the server's
 * `$/progress`, the client's state and the user's toggle. Pure: the item itself is drawn in
 * `statusBar.ts`.
 */

export type Phase = 'starting' | 'loading' | 'ready' | 'error' | 'stopped';

/** The `value` of a `$/progress` notification (work done progress). */
export type ProgressValue =
  | { kind: 'begin'; title: string; message?: string; percentage?: number }
  | { kind: 'report'; message?: string; percentage?: number }
  | { kind: 'end'; message?: string };

export interface View {
  text: string;
  tooltip: string;
  /** Drawn with the error background. */
  error: boolean;
  /** Drawn with the warning background (disabled). */
  warning: boolean;
}

export class Status {
  phase: Phase = 'starting';
  /** What is loading, what is ready or what went wrong. */
  detail = '';
  enabled = true;
  model = '';

  /** A `$/progress` value from the server (model loading). */
  progress(value: ProgressValue): void {
    switch (value.kind) {
      case 'begin':
        this.phase = 'loading';
        this.detail = value.message ?? value.title;
        break;
      case 'report':
        this.phase = 'loading';
        if (value.message) this.detail = value.message;
        break;
      case 'end': {
        // The server ends its load progress with `ready: …` or `cannot load …: error`.
        const msg = value.message ?? '';
        if (/^cannot\b/i.test(msg)) {
          this.phase = 'error';
        } else {
          this.phase = 'ready';
        }
        this.detail = msg;
        break;
      }
    }
  }

  starting(): void {
    this.phase = 'starting';
    this.detail = 'starting tessera lsp';
  }

  /** The server answered `initialize`; loading starts with `initialized`. */
  running(): void {
    if (this.phase === 'starting') {
      this.phase = 'loading';
      this.detail = `loading model ${this.model}`;
    }
  }

  failed(message: string): void {
    this.phase = 'error';
    this.detail = message;
  }

  stopped(): void {
    if (this.phase !== 'error') {
      this.phase = 'stopped';
      this.detail = 'the server is not running';
    }
  }

  view(): View {
    const model = this.model ? ` (${this.model})` : '';
    const hint = '\n\nClick for Tessera commands.';
    if (!this.enabled && this.phase !== 'error') {
      return {
        text: '$(circle-slash) Tessera',
        tooltip: `Tessera: completions disabled${model}${hint}`,
        error: false,
        warning: true,
      };
    }
    switch (this.phase) {
      case 'starting':
        return { text: '$(loading~spin) Tessera', tooltip: `Tessera: starting${hint}`, error: false, warning: false };
      case 'loading':
        return {
          text: '$(loading~spin) Tessera',
          tooltip: `Tessera: ${this.detail || 'loading'}${hint}`,
          error: false,
          warning: false,
        };
      case 'ready':
        return {
          text: '$(sparkle) Tessera',
          tooltip: `Tessera: ${this.detail || 'ready'}${hint}`,
          error: false,
          warning: false,
        };
      case 'error':
        return {
          text: '$(error) Tessera',
          tooltip: `Tessera: ${this.detail}\n\nSee the "Tessera" output for the log.${hint}`,
          error: true,
          warning: false,
        };
      case 'stopped':
        return { text: '$(debug-stop) Tessera', tooltip: `Tessera: ${this.detail}${hint}`, error: false, warning: false };
    }
  }
}
