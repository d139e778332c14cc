; Definitions (`@definition.<kind>` with `@name`), enclosing scopes (`@scope`) and imports
; (`@import`) of C++. A function's name sits under its declarator, behind a pointer or
; reference (`T &f()`), and may be qualified (`void Foo::bar()`). When several patterns match
; the same definition, the first one in this file wins, so methods come before functions.

; Methods defined or declared inside a class body.
(field_declaration_list
  [
    (function_definition
      declarator: [
        (function_declarator
          declarator: [
            (field_identifier)
            (identifier)
            (destructor_name)
            (operator_name)
          ] @name)
        (pointer_declarator
          declarator: (function_declarator
            declarator: [
              (field_identifier)
              (operator_name)
            ] @name))
        (reference_declarator
          (function_declarator
            declarator: [
              (field_identifier)
              (operator_name)
            ] @name))
      ])
    (field_declaration
      declarator: [
        (function_declarator
          declarator: [
            (field_identifier)
            (operator_name)
          ] @name)
        (pointer_declarator
          declarator: (function_declarator
            declarator: [
              (field_identifier)
              (operator_name)
            ] @name))
        (reference_declarator
          (function_declarator
            declarator: [
              (field_identifier)
              (operator_name)
            ] @name))
      ])
    ; Constructors and destructors.
    (declaration
      declarator: (function_declarator
        declarator: [
          (identifier)
          (destructor_name)
        ] @name))
  ] @definition.method)

; Method templates inside a class body.
(field_declaration_list
  (template_declaration
    (function_definition
      declarator: (function_declarator
        declarator: [
          (field_identifier)
          (identifier)
          (operator_name)
        ] @name)) @definition.method))

; Methods defined outside their class: `void Foo::bar() { ... }`, `Foo::~Foo()`.
(function_definition
  declarator: [
    (function_declarator
      declarator: (qualified_identifier
        name: [
          (identifier) @name
          (destructor_name) @name
          (operator_name) @name
          (qualified_identifier
            name: [
              (identifier)
              (destructor_name)
              (operator_name)
            ] @name)
        ]))
    (pointer_declarator
      declarator: (function_declarator
        declarator: (qualified_identifier
          name: [
            (identifier)
            (operator_name)
          ] @name)))
    (reference_declarator
      (function_declarator
        declarator: (qualified_identifier
          name: [
            (identifier)
            (operator_name)
          ] @name)))
  ]) @definition.method

; Functions and their prototypes.
[
  (function_definition
    declarator: [
      (function_declarator
        declarator: [
          (identifier)
          (field_identifier)
          (operator_name)
        ] @name)
      (pointer_declarator
        declarator: (function_declarator
          declarator: [
            (identifier)
            (field_identifier)
          ] @name))
      (reference_declarator
        (function_declarator
          declarator: [
            (identifier)
            (field_identifier)
          ] @name))
    ])
  (declaration
    declarator: [
      (function_declarator
        declarator: [
          (identifier)
          (operator_name)
        ] @name)
      (pointer_declarator
        declarator: (function_declarator
          declarator: (identifier) @name))
      (reference_declarator
        (function_declarator
          declarator: (identifier) @name))
    ])
] @definition.function

; Only definitions with a body: `class C;` and `struct S *p;` merely mention the type.
(class_specifier
  name: (type_identifier) @name
  body: (_)) @definition.class

[
  (struct_specifier
    name: (type_identifier) @name
    body: (_))
  (union_specifier
    name: (type_identifier) @name
    body: (_))
] @definition.struct

(enum_specifier
  name: (type_identifier) @name
  body: (_)) @definition.enum

(namespace_definition
  name: [
    (namespace_identifier)
    (nested_namespace_specifier)
  ] @name) @definition.module

[
  (type_definition
    declarator: [
      (type_identifier) @name
      (pointer_declarator
        declarator: (type_identifier) @name)
    ])
  (alias_declaration
    name: (type_identifier) @name)
] @definition.type

(preproc_def
  name: (identifier) @name) @definition.constant

(preproc_function_def
  name: (identifier) @name) @definition.macro

; Scopes
(function_definition) @scope

[
  (class_specifier
    body: (_))
  (struct_specifier
    body: (_))
  (union_specifier
    body: (_))
] @scope

(namespace_definition) @scope

; Imports
(preproc_include) @import

(using_declaration) @import
