; Definitions (`@definition.<kind>` with `@name`), enclosing scopes (`@scope`) and imports
; (`@import`) of Rust. When several patterns match the same definition, the first one in this
; file wins, so the specific patterns (methods) come before the general ones (functions).

; Methods: functions inside an impl or a trait.
(impl_item
  body: (declaration_list
    (function_item
      name: (identifier) @name) @definition.method))

(trait_item
  body: (declaration_list
    [
      (function_item
        name: (identifier) @name)
      (function_signature_item
        name: (identifier) @name)
    ] @definition.method))

(function_item
  name: (identifier) @name) @definition.function

; Declarations without a body: `extern` blocks.
(function_signature_item
  name: (identifier) @name) @definition.function

(struct_item
  name: (type_identifier) @name) @definition.struct

(union_item
  name: (type_identifier) @name) @definition.struct

(enum_item
  name: (type_identifier) @name) @definition.enum

(trait_item
  name: (type_identifier) @name) @definition.trait

(type_item
  name: (type_identifier) @name) @definition.type

(const_item
  name: (identifier) @name) @definition.constant

(static_item
  name: (identifier) @name) @definition.constant

(mod_item
  name: (identifier) @name) @definition.module

(macro_definition
  name: (identifier) @name) @definition.macro

; Scopes
(function_item) @scope

(impl_item) @scope

(trait_item) @scope

(mod_item
  body: (declaration_list)) @scope

; Imports
(use_declaration) @import

(extern_crate_declaration) @import
