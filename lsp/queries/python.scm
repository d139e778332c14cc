; Definitions (`@definition.<kind>` with `@name`), enclosing scopes (`@scope`) and imports
; (`@import`) of Python. When several patterns match the same definition, the first one in
; this file wins, so the specific patterns (methods) come before the general ones (functions).

; Methods: functions directly in a class body, decorated or not.
(class_definition
  body: (block
    (function_definition
      name: (identifier) @name) @definition.method))

(class_definition
  body: (block
    (decorated_definition
      definition: (function_definition
        name: (identifier) @name) @definition.method)))

(function_definition
  name: (identifier) @name) @definition.function

(class_definition
  name: (identifier) @name) @definition.class

; Module-level names: `MAX = 10`, `Alias: TypeAlias = ...`, `type Alias = ...`.
(module
  (expression_statement
    (assignment
      left: (identifier) @name)) @definition.constant)

(module
  (type_alias_statement
    left: (type
      (identifier) @name)) @definition.type)

; Scopes
(function_definition) @scope

(class_definition) @scope

; Imports
(import_statement) @import

(import_from_statement) @import

(future_import_statement) @import
