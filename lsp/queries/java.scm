; Definitions (`@definition.<kind>` with `@name`), enclosing scopes (`@scope`) and imports
; (`@import`) of Java.

[
  (class_declaration
    name: (identifier) @name)
  (record_declaration
    name: (identifier) @name)
] @definition.class

[
  (interface_declaration
    name: (identifier) @name)
  (annotation_type_declaration
    name: (identifier) @name)
] @definition.interface

(enum_declaration
  name: (identifier) @name) @definition.enum

[
  (method_declaration
    name: (identifier) @name)
  (constructor_declaration
    name: (identifier) @name)
  (compact_constructor_declaration
    name: (identifier) @name)
] @definition.method

; `static final` fields are the constants of a class.
(field_declaration
  (modifiers) @_modifiers
  declarator: (variable_declarator
    name: (identifier) @name)
  (","
    declarator: (variable_declarator
      name: (identifier) @name))*
  (#match? @_modifiers "\\bstatic\\b")
  (#match? @_modifiers "\\bfinal\\b")) @definition.constant

; Scopes
[
  (class_declaration)
  (record_declaration)
  (interface_declaration)
  (annotation_type_declaration)
  (enum_declaration)
  (method_declaration)
  (constructor_declaration)
  (compact_constructor_declaration)
] @scope

; Imports
(package_declaration) @import

(import_declaration) @import
