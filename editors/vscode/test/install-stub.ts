/** Imported first by tests that load extension modules: `vscode` resolves to the stub. */
import { installVscodeStub } from './vscode-stub';

installVscodeStub();
