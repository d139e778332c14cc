; Definitions (`@definition.<kind>` with `@name`), enclosing scopes (`@scope`) and imports
; (`@import`) of JavaScript. When several patterns match the same definition, the first one in
; this file wins, so the specific patterns come before the general ones.

(method_definition
  name: (_) @name) @definition.method

; Class fields holding a function: `onClick = () => { ... }`.
(field_definition
  property: (_) @name
  value: [
    (arrow_function)
    (function_expression)
  ]) @definition.method

(class_declaration
  name: (_) @name) @definition.class

(class
  name: (_) @name) @definition.class

[
  (function_declaration
    name: (identifier) @name)
  (generator_function_declaration
    name: (identifier) @name)
] @definition.function

; `const f = (a) => ...`, `let g = function () { ... }`: the declaration is the definition,
; so that its header reads `const f = (a) =>`.
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
  (class)
  (method_definition)
  (function_declaration)
  (generator_function_declaration)
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

(field_definition
  value: [
    (arrow_function)
    (function_expression)
  ]) @scope

; Imports: ES modules and CommonJS `const x = require("x")`.
(import_statement) @import

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
