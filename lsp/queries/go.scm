; Definitions (`@definition.<kind>` with `@name`), enclosing scopes (`@scope`) and imports
; (`@import`) of Go. When several patterns match the same definition, the first one in this
; file wins, so the specific patterns (struct, interface) come before the general one (type).

(function_declaration
  name: (identifier) @name) @definition.function

(method_declaration
  name: (field_identifier) @name) @definition.method

(type_spec
  name: (type_identifier) @name
  type: (struct_type)) @definition.struct

(type_spec
  name: (type_identifier) @name
  type: (interface_type)) @definition.interface

(type_spec
  name: (type_identifier) @name) @definition.type

(type_alias
  name: (type_identifier) @name) @definition.type

; Package-level constants: one definition per name of `const a, b = 1, 2` and of
; `const ( A = iota; B )`.
(source_file
  (const_declaration
    (const_spec
      name: (identifier) @name
      (","
        name: (identifier) @name)*) @definition.constant))

; Scopes
(function_declaration) @scope

(method_declaration) @scope

; Imports
(package_clause) @import

(import_declaration) @import
