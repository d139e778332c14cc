; Definitions (`@definition.<kind>` with `@name`), enclosing scopes (`@scope`) and imports
; (`@import`) of TypeScript. Used for both the TypeScript and the TSX grammar, so only nodes
; the two share appear here. When several patterns match the same definition, the first one in
; this file wins, so the specific patterns come before the general ones.

[
  (method_definition
    name: (_) @name)
  (method_signature
    name: (_) @name)
  (abstract_method_signature
    name: (_) @name)
] @definition.method

; Class fields holding a function: `onClick = () => { ... }`.
(public_field_definition
  name: (_) @name
  value: [
    (arrow_function)
    (function_expression)
  ]) @definition.method

[
  (class_declaration
    name: (_) @name)
  (abstract_class_declaration
    name: (_) @name)
  (class
    name: (_) @name)
] @definition.class

(interface_declaration
  name: (_) @name) @definition.interface

(type_alias_declaration
  name: (_) @name) @definition.type

(enum_declaration
  name: (_) @name) @definition.enum

[
  (function_declaration
    name: (identifier) @name)
  (generator_function_declaration
    name: (identifier) @name)
  (function_signature
    name: (identifier) @name)
] @definition.function

; `const f = (a: number) => ...`: the declaration is the definition, so that its header reads
; `const f = (a: number) =>`.
([
  (lexical_declaration
    (variable_declarator
      name: (identifier) @name
      value: [
        (arrow_function)
        (function_expression)
        (generator_function)
      ]))
  (variable_declaration
    (variable_declarator
      name: (identifier) @name
      value: [
        (arrow_function)
        (function_expression)
        (generator_function)
      ]))
] @definition.function)

; `namespace A.B { ... }`, `module M { ... }` (not `declare module "pkg"`).
[
  (internal_module
    name: [
      (identifier)
      (nested_identifier)
    ] @name)
  (module
    name: [
      (identifier)
      (nested_identifier)
    ] @name)
] @definition.module

; Top-level constants: `const DEFAULTS = { ... }`, also exported (not `require` calls).
(program
  (lexical_declaration
    kind: "const"
    (variable_declarator
      name: (identifier) @name
      value: (_) @_value)) @definition.constant
  (#not-match? @_value "^require\\s*\\("))

(program
  (export_statement
    declaration: (lexical_declaration
      kind: "const"
      (variable_declarator
        name: (identifier) @name
        value: (_) @_value)) @definition.constant)
  (#not-match? @_value "^require\\s*\\("))

; Scopes
[
  (class_declaration)
  (abstract_class_declaration)
  (class)
  (interface_declaration)
  (method_definition)
  (function_declaration)
  (generator_function_declaration)
  (internal_module)
  (module)
] @scope

([
  (lexical_declaration
    (variable_declarator
      value: [
        (arrow_function)
        (function_expression)
        (generator_function)
      ]))
  (variable_declaration
    (variable_declarator
      value: [
        (arrow_function)
        (function_expression)
        (generator_function)
      ]))
] @scope)

(public_field_definition
  value: [
    (arrow_function)
    (function_expression)
  ]) @scope

; Imports: ES modules, `import x = require("x")`, `import A = B.C`, and CommonJS.
(import_statement) @import

(import_alias) @import

([
  (lexical_declaration
    (variable_declarator
      value: (call_expression
        function: (identifier) @_require)))
  (variable_declaration
    (variable_declarator
      value: (call_expression
        function: (identifier) @_require)))
] @import
  (#eq? @_require "require"))
