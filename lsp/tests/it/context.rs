//! The context builder (`context::build`) on realistic files of every language, with a small
//! token budget so that the prefix window is cut: snapshots of the mode, where the window
//! starts, the snippets (signatures of symbols used above the cursor, from the workspace index,
//! and the most similar window of another open file), the elided header (imports and the
//! headers of the enclosing scopes) and the prefix and suffix around the cursor. Also the
//! prefix-cache stability the module promises (typing on the cursor's line leaves the prompt
//! before that line byte-identical) and cursors outside the text or inside a character.

use std::fmt::Write as _;

use expect_test::{Expect, expect};
use tessera_lsp::context::{self, Context, ContextInputs, ContextSettings, OpenFile};
use tessera_lsp::document::Document;
use tessera_lsp::index::{self, IndexLimits, WorkspaceIndex};
use tessera_lsp::language::Language;
use tessera_lsp::template::{Family, PromptParts};

/// A file of the workspace or an open document.
struct File {
    path: &'static str,
    language: Language,
    text: &'static str,
}

/// One snapshot: the document (with `$0` at the cursor), a second file of the workspace that
/// defines symbols used above the cursor (none for plain text, which has no definitions), and
/// another open document.
struct Case {
    doc: File,
    library: Option<File>,
    open: File,
}

/// A deterministic stand-in for the model's tokenizer: about four bytes a token.
fn count_tokens(s: &str) -> usize {
    s.len().div_ceil(4)
}

/// Small enough that every document's prefix is cut and its header elided.
fn settings() -> ContextSettings {
    ContextSettings {
        budget_tokens: 512,
        suffix_share: 0.08,
        snippet_share: 0.3,
        window_lines: 8,
        max_symbols: 8,
    }
}

/// The document's text without the marker, and the cursor's byte offset.
fn split_marker(marked: &str) -> (String, usize) {
    let offset = marked.find("$0").expect("the document has a `$0` cursor marker");
    (marked.replacen("$0", "", 1), offset)
}

fn index_of(files: &[(&str, Language, &str)]) -> WorkspaceIndex {
    let index = WorkspaceIndex::new(IndexLimits::default());
    for &(path, language, text) in files {
        if let Some(tree) = Document::new(path, language, 0, text.to_owned()).snapshot().tree {
            index.update_file(path, language, text, &tree);
        }
    }
    index
}

/// Builds the context of `text` at `offset` with the case's index and open file.
fn build_at(case: &Case, text: &str, offset: usize) -> Context {
    build_after(case, text, offset, &[])
}

/// [`build_at`], after a prompt that had `previous` snippets.
fn build_after(case: &Case, text: &str, offset: usize, previous: &[tessera_lsp::template::Snippet]) -> Context {
    let mut files = vec![(case.doc.path, case.doc.language, text)];
    files.extend(case.library.as_ref().map(|l| (l.path, l.language, l.text)));
    let index = index_of(&files);
    let others = [OpenFile {
        path: case.open.path.into(),
        language: case.open.language,
        text: case.open.text.into(),
    }];
    let snapshot = Document::new(case.doc.path, case.doc.language, 1, text.to_owned()).snapshot();
    context::build(
        &settings(),
        &ContextInputs {
            doc: &snapshot,
            offset,
            path: case.doc.path,
            others: &others,
            index: Some(&index),
            count_tokens: &count_tokens,
            previous_snippets: previous,
        },
    )
}

/// The prompt as the Qwen template renders it.
fn render(case: &Case, ctx: &Context) -> String {
    Family::QwenCoder.render(&PromptParts {
        repo: "demo",
        path: case.doc.path,
        language: case.doc.language,
        snippets: &ctx.snippets,
        prefix: &ctx.prefix,
        suffix: &ctx.suffix,
    })
}

fn check(name: &str, expected: Expect) {
    let case = &case(name);
    let (text, offset) = split_marker(case.doc.text);
    let ctx = build_at(case, &text, offset);

    // What the snapshot cannot show at a glance.
    assert!(ctx.window_start > 0, "the budget must cut the prefix");
    assert!(ctx.tokens <= settings().budget_tokens, "{} tokens", ctx.tokens);
    assert!(
        ctx.prefix.ends_with(&text[ctx.window_start..offset]),
        "the prefix ends with the verbatim window up to the cursor"
    );
    assert!(
        text[offset..].starts_with(&ctx.suffix),
        "the suffix is the text after the cursor"
    );
    let cursor_line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i + 1);
    assert!(
        offset + ctx.suffix.len() >= cursor_line_end,
        "the suffix holds the cursor's line"
    );
    // No snippet repeats a definition of the document that the prompt shows.
    let first_line = text[..ctx.window_start].matches('\n').count() + 1;
    let last_line = text[..offset + ctx.suffix.len()]
        .trim_end_matches('\n')
        .matches('\n')
        .count()
        + 1;
    if let Some(tree) = Document::new(case.doc.path, case.doc.language, 1, text.clone())
        .snapshot()
        .tree
    {
        for symbol in index::symbols(case.doc.language, &text, &tree, case.doc.path) {
            let shown = (first_line..=last_line).contains(&(symbol.line + 1));
            let repeated = ctx
                .snippets
                .iter()
                .any(|s| s.path == case.doc.path && s.text.contains(&symbol.signature));
            assert!(
                !(shown && repeated),
                "{} is in the window and in a snippet",
                symbol.name
            );
        }
    }

    let mut out = format!(
        "{} | window from line {first_line} of {} | {} tokens\n",
        serde_json::to_string(&ctx.mode).unwrap().trim_matches('"'),
        text.lines().count(),
        ctx.tokens
    );
    for snippet in &ctx.snippets {
        writeln!(out, "--- snippet {}\n{}", snippet.path, snippet.text.trim_end()).unwrap();
    }
    let header = &ctx.prefix[..ctx.prefix.len() - (offset - ctx.window_start)];
    writeln!(
        out,
        "--- header\n{}--- window\n{}$0{}--- end",
        header,
        &text[ctx.window_start..offset],
        ctx.suffix
    )
    .unwrap();
    expected.assert_eq(&out);
}

#[test]
fn rust_method_in_a_module() {
    check(
        "rust",
        expect![[r#"
            single-line | window from line 81 of 121 | 391 tokens
            --- snippet src/server.rs
            /// `message` cut to at most `max` characters, for error replies.
            fn shorten(message: String, max: usize) -> String
            --- snippet src/util.rs
            /// The answer to a request.
            #[derive(Debug, Clone, PartialEq)]
            pub enum Reply

            /// A parsed request.
            #[derive(Debug, Clone, PartialEq)]
            pub enum Command
            --- header
            use std::collections::HashMap;
            use std::io::{self, BufRead, BufReader, Write};
            use std::net::{TcpListener, TcpStream};
            use std::time::{Duration, Instant};

            pub mod session {
                // ...
                impl Session {
                    // ...
                    pub fn run(
                        &mut self,
                        store: &mut Store,
                        idle: Duration,
                    ) -> io::Result<usize> {
                        // ...
            --- window
                                    None => Reply::NotFound,
                                },
                                Ok(Command::Set(key, value)) => {
                                    if store.len() >= MAX_KEYS {
                                        Reply::Error("store is full".into())
                                    } else {
                                        store.set(key, value);
                                        Reply::Ok
                                    }
                                }
                                Ok(Command::Delete(key)) => match store.remove(&key) {
                                    Some(_) => Reply::Ok,
                                    None => Reply::NotFound,
                                },
                                Err(message) => Reply::Error(shorten(message, 80)),
                            };
                            self.stream.write_all(reply.$0)?;
                            self.served += 1;
                        }
                        Ok(self.served)
                    }
                }
            }

            --- end
        "#]],
    );
}

const RUST_DOC: &str = r#"//! A line-protocol key-value server: reads requests from a socket and applies them to a store.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::util::{Command, Reply, escape_value, parse_command};

/// Keys a store holds at most.
pub const MAX_KEYS: usize = 10_000;

/// The in-memory store, with hit and miss counters.
#[derive(Debug, Default)]
pub struct Store {
    entries: HashMap<String, String>,
    hits: u64,
    misses: u64,
}

impl Store {
    pub fn new() -> Self {
        Store::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&mut self, key: &str) -> Option<&String> {
        let found = self.entries.get(key);
        if found.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        found
    }

    pub fn set(&mut self, key: String, value: String) -> Option<String> {
        self.entries.insert(key, value)
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(key)
    }
}

pub mod session {
    use super::*;

    /// One client connection.
    pub struct Session {
        stream: TcpStream,
        started: Instant,
        served: usize,
    }

    impl Session {
        pub fn new(stream: TcpStream) -> Self {
            Session {
                stream,
                started: Instant::now(),
                served: 0,
            }
        }

        /// Serves requests until the client hangs up or stays idle for `idle`.
        pub fn run(
            &mut self,
            store: &mut Store,
            idle: Duration,
        ) -> io::Result<usize> {
            self.stream.set_read_timeout(Some(idle))?;
            let reader = BufReader::new(self.stream.try_clone()?);
            for line in reader.lines() {
                let line = line?;
                let reply = match parse_command(&line) {
                    Ok(Command::Get(key)) => match store.get(&key) {
                        Some(value) => Reply::Value(escape_value(value)),
                        None => Reply::NotFound,
                    },
                    Ok(Command::Set(key, value)) => {
                        if store.len() >= MAX_KEYS {
                            Reply::Error("store is full".into())
                        } else {
                            store.set(key, value);
                            Reply::Ok
                        }
                    }
                    Ok(Command::Delete(key)) => match store.remove(&key) {
                        Some(_) => Reply::Ok,
                        None => Reply::NotFound,
                    },
                    Err(message) => Reply::Error(shorten(message, 80)),
                };
                self.stream.write_all(reply.$0)?;
                self.served += 1;
            }
            Ok(self.served)
        }
    }
}

/// Accepts connections forever, one session at a time.
pub fn serve(listener: TcpListener) -> io::Result<()> {
    let mut store = Store::new();
    for stream in listener.incoming() {
        let mut session = session::Session::new(stream?);
        session.run(&mut store, Duration::from_secs(30))?;
    }
    Ok(())
}

/// `message` cut to at most `max` characters, for error replies.
fn shorten(message: String, max: usize) -> String {
    match message.char_indices().nth(max) {
        Some((end, _)) => message[..end].to_owned(),
        None => message,
    }
}
"#;

const RUST_LIB: &str = r#"//! The line protocol: requests and replies.

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Get(String),
    Set(String, String),
    Delete(String),
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Value(String),
    Ok,
    NotFound,
    Error(String),
}

impl Reply {
    /// The reply as sent on the wire, newline included.
    pub fn encode(&self) -> String {
        match self {
            Reply::Value(v) => format!("VALUE {v}\n"),
            Reply::Ok => "OK\n".to_owned(),
            Reply::NotFound => "NOT_FOUND\n".to_owned(),
            Reply::Error(e) => format!("ERROR {e}\n"),
        }
    }
}

/// Parses `GET key`, `SET key value` or `DEL key`.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("GET"), Some(key), None) => Ok(Command::Get(key.to_owned())),
        (Some("SET"), Some(key), Some(value)) => Ok(Command::Set(key.to_owned(), value.to_owned())),
        (Some("DEL"), Some(key), None) => Ok(Command::Delete(key.to_owned())),
        _ => Err(format!("bad request: {line}")),
    }
}

/// Escapes backslashes, spaces and newlines in a value.
pub fn escape_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace(' ', "\\s").replace('\n', "\\n")
}
"#;

const RUST_OPEN: &str = r#"//! A blocking client of the line protocol.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;

use crate::util::Reply;

pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: &str) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { stream, reader })
    }

    /// Sends one request line and reads the reply line.
    pub fn request(&mut self, line: &str) -> io::Result<String> {
        self.stream.write_all(line.as_bytes())?;
        self.stream.write_all(b"\n")?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply)?;
        Ok(reply)
    }

    pub fn set(&mut self, key: &str, value: &str) -> io::Result<bool> {
        let reply = self.request(&format!("SET {key} {value}"))?;
        Ok(reply == Reply::Ok.encode())
    }
}
"#;

#[test]
fn python_decorated_method_in_a_class() {
    check(
        "python",
        expect![[r#"
            single-line | window from line 73 of 89 | 396 tokens
            --- snippet app/pricing.py
            TAX_RATES = {
                "DE": Decimal("0.19"),
                "FR": Decimal("0.20"),
                "NL": Decimal("0.21"),
            }

            def apply_discount(amount: Decimal, coupon: str) -> Decimal:
                """The amount less the coupon's percentage; unknown coupons change nothing."""
            --- snippet app/orders.py
            log = logging.getLogger(__name__)
            --- snippet app/invoices.py
                return lines


            def tax_amount(order: Order) -> Decimal:
                rate = TAX_RATES.get(order.country, Decimal("0.20"))
                amount = order.subtotal
                return round_money(amount * rate)
            --- header
            from __future__ import annotations
            import logging
            from dataclasses import dataclass, field
            from decimal import Decimal
            from typing import Iterable, Optional

            class OrderService:
                # ...
                @staticmethod
                def price(
                    order: Order,
                    coupons: Iterable[str] = (),
                    *,
                    shipping: Optional[Decimal] = None,
                ) -> Decimal:
                    # ...
            --- window
                        raise ValueError(f"order {order.id} has no items")
                    amount = order.subtotal
                    if order.coupon and order.coupon in coupons:
                        log.debug("coupon %s applied to %s", order.coupon, order.id)
                        amount = apply_discount(amount, order.coupon)
                    if shipping is None:
                        shipping = Decimal(0) if amount >= 50 else Decimal("4.90")
                    amount += shipping
                    rate = TAX_RATES.get(order.country, Decimal("0.20"))
                    taxed = amount * (1 + rate)
                    return $0

                def checkout(self, order: Order) -> Decimal:
                    due = self.price(order)
                    self.repository.save(order, due)
            --- end
        "#]],
    );
}

const PYTHON_DOC: &str = r#""""Order processing: pricing, discounts and persistence of orders."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable, Optional

from app.pricing import TAX_RATES, apply_discount, round_money

log = logging.getLogger(__name__)

DEFAULT_CURRENCY = "EUR"


@dataclass
class LineItem:
    sku: str
    quantity: int
    unit_price: Decimal

    def total(self) -> Decimal:
        return self.unit_price * self.quantity


@dataclass
class Order:
    id: str
    customer: str
    country: str
    items: list[LineItem] = field(default_factory=list)
    coupon: Optional[str] = None

    def add(self, item: LineItem) -> None:
        for existing in self.items:
            if existing.sku == item.sku:
                existing.quantity += item.quantity
                return
        self.items.append(item)

    @property
    def subtotal(self) -> Decimal:
        return sum((i.total() for i in self.items), Decimal(0))


class OrderService:
    """Prices and stores orders."""

    def __init__(self, repository, currency: str = DEFAULT_CURRENCY):
        self.repository = repository
        self.currency = currency

    def find(self, order_id: str) -> Optional[Order]:
        return self.repository.get(order_id)

    @staticmethod
    def price(
        order: Order,
        coupons: Iterable[str] = (),
        *,
        shipping: Optional[Decimal] = None,
    ) -> Decimal:
        """The amount due for ``order``.

        The subtotal of its items, less the discount of its coupon when the
        coupon is one of ``coupons``, plus shipping (free from 50 on), plus the
        tax of the order's country (20% when the country is not known).

        Raises ``ValueError`` for an order without items.
        """
        if not order.items:
            raise ValueError(f"order {order.id} has no items")
        amount = order.subtotal
        if order.coupon and order.coupon in coupons:
            log.debug("coupon %s applied to %s", order.coupon, order.id)
            amount = apply_discount(amount, order.coupon)
        if shipping is None:
            shipping = Decimal(0) if amount >= 50 else Decimal("4.90")
        amount += shipping
        rate = TAX_RATES.get(order.country, Decimal("0.20"))
        taxed = amount * (1 + rate)
        return $0

    def checkout(self, order: Order) -> Decimal:
        due = self.price(order)
        self.repository.save(order, due)
        log.info("order %s checked out: %s %s", order.id, due, self.currency)
        return due
"#;

const PYTHON_LIB: &str = r#""""Prices, discounts and taxes."""

from decimal import ROUND_HALF_EVEN, Decimal

TAX_RATES = {
    "DE": Decimal("0.19"),
    "FR": Decimal("0.20"),
    "NL": Decimal("0.21"),
}

COUPONS = {"WELCOME10": Decimal("0.10"), "VIP25": Decimal("0.25")}


def round_money(amount: Decimal) -> Decimal:
    """Rounds to cents, banker's rounding."""
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


def apply_discount(amount: Decimal, coupon: str) -> Decimal:
    """The amount less the coupon's percentage; unknown coupons change nothing."""
    rate = COUPONS.get(coupon, Decimal(0))
    return round_money(amount * (1 - rate))
"#;

const PYTHON_OPEN: &str = r#""""Invoices for checked-out orders."""

from decimal import Decimal

from app.orders import Order
from app.pricing import TAX_RATES, round_money


def invoice_lines(order: Order) -> list[str]:
    lines = [f"Invoice for order {order.id}"]
    for item in order.items:
        lines.append(f"{item.sku} x{item.quantity}: {item.total()}")
    return lines


def tax_amount(order: Order) -> Decimal:
    rate = TAX_RATES.get(order.country, Decimal("0.20"))
    amount = order.subtotal
    return round_money(amount * rate)
"#;

#[test]
fn javascript_async_method_in_a_class() {
    check(
        "javascript",
        expect![[r#"
            single-line | window from line 17 of 57 | 363 tokens
            --- snippet src/format.js
            /** Formats an amount in cents as a price. */
            export function formatPrice(cents, currency = 'EUR')
            --- snippet src/wishlist.js
                const product = await fetchProduct(id);
                lines.push(`${product.name}: ${formatPrice(product.price, currency)}`);
              }
              return lines;
            }
            --- header
            import { clamp, formatPrice } from './format.js';
            import { fetchProduct } from './api.js';

            export class Cart {
              // ...
              load() {
                // ...
            --- window
                const raw = this.storage.getItem(STORAGE_KEY);
                if (!raw) {
                  return;
                }
                for (const [id, quantity] of JSON.parse(raw)) {
                  this.items.set(id, quantity);
                }
              }

              save() {
                this.storage.setItem(STORAGE_KEY, JSON.stringify([...this.items]));
              }

              add(id, quantity = 1) {
                const current = this.items.get(id) ?? 0;
                this.items.set(id, clamp(current + quantity, 0, MAX_QUANTITY));
                this.save();
              }

              remove(id) {
                this.items.delete(id);
                this.save();
              }

              async summary(currency) {
                const lines = [];
                let total = 0;
                for (const [id, quantity] of this.items) {
                  const product = await fetchProduct(id);
                  const amount = product.price * quantity;
                  total += amount;
                  lines.push(`${product.name} x${quantity}: ${formatPrice(amount, currency)}`);
                }
                lines.push(`Total: ${formatPrice(total, $0)}`);
                return lines.join('\n');
              }
            }

            export function emptyCart(storage) {
              storage.removeItem(STORAGE_KEY);
            }
            --- end
        "#]],
    );
}

const JS_DOC: &str = r#"// Shopping cart state, kept in localStorage.

import { clamp, formatPrice } from './format.js';
import { fetchProduct } from './api.js';

const STORAGE_KEY = 'cart:v2';
const MAX_QUANTITY = 99;

export class Cart {
  constructor(storage = window.localStorage) {
    this.storage = storage;
    this.items = new Map();
    this.load();
  }

  load() {
    const raw = this.storage.getItem(STORAGE_KEY);
    if (!raw) {
      return;
    }
    for (const [id, quantity] of JSON.parse(raw)) {
      this.items.set(id, quantity);
    }
  }

  save() {
    this.storage.setItem(STORAGE_KEY, JSON.stringify([...this.items]));
  }

  add(id, quantity = 1) {
    const current = this.items.get(id) ?? 0;
    this.items.set(id, clamp(current + quantity, 0, MAX_QUANTITY));
    this.save();
  }

  remove(id) {
    this.items.delete(id);
    this.save();
  }

  async summary(currency) {
    const lines = [];
    let total = 0;
    for (const [id, quantity] of this.items) {
      const product = await fetchProduct(id);
      const amount = product.price * quantity;
      total += amount;
      lines.push(`${product.name} x${quantity}: ${formatPrice(amount, currency)}`);
    }
    lines.push(`Total: ${formatPrice(total, $0)}`);
    return lines.join('\n');
  }
}

export function emptyCart(storage) {
  storage.removeItem(STORAGE_KEY);
}
"#;

const JS_LIB: &str = r#"/** Formats an amount in cents as a price. */
export function formatPrice(cents, currency = 'EUR') {
  return new Intl.NumberFormat('en', { style: 'currency', currency }).format(cents / 100);
}

/** Limits `value` to [min, max]. */
export function clamp(value, min, max) {
  return Math.min(Math.max(value, min), max);
}
"#;

const JS_OPEN: &str = r#"// Wished-for products, shown with their current price.

import { formatPrice } from './format.js';
import { fetchProduct } from './api.js';

export async function wishlistLines(ids, currency) {
  const lines = [];
  for (const id of ids) {
    const product = await fetchProduct(id);
    lines.push(`${product.name}: ${formatPrice(product.price, currency)}`);
  }
  return lines;
}
"#;

#[test]
fn typescript_method_in_a_class() {
    check(
        "typescript",
        expect![[r#"
            single-line | window from line 33 of 65 | 371 tokens
            --- snippet src/retry.ts
            /** Exponential backoff with jitter, in milliseconds, before retry number `attempt` (from 1). */
            export function backoff(attempt: number, base = 100, cap = 10_000): number
            --- snippet src/worker.ts
              for (;;) {
                try {
                  return await run();
                } catch (error) {
                  attempt += 1;
                  if (attempt >= maxAttempts) {
                    throw error;
                  }
            --- header
            import { EventEmitter } from 'events';
            import type { Job, JobResult } from './types';
            import { backoff, sleep } from './retry';

            export class Scheduler extends EventEmitter {
              // ...
              get pending(): number {
                // ...
            --- window
                return this.queue.length;
              }

              private async pump(): Promise<void> {
                while (this.running < this.options.concurrency && this.queue.length > 0) {
                  const job = this.queue.shift()!;
                  this.running += 1;
                  this.execute(job).finally(() => {
                    this.running -= 1;
                    void this.pump();
                  });
                }
              }

              private async execute(job: Job): Promise<JobResult> {
                let attempt = 0;
                for (;;) {
                  try {
                    const value = await job.run();
                    this.emit('done', job.id, value);
                    return { id: job.id, ok: true, value };
                  } catch (error) {
                    attempt += 1;
                    this.options.onError?.(job, error);
                    if (attempt >= this.options.maxAttempts) {
                      return { id: job.id, ok: false, error: String(error) };
                    }
                    const delay = backoff(attempt);
                    await sleep($0);
                  }
                }
              }
            }
            --- end
        "#]],
    );
}

const TS_DOC: &str = r#"import { EventEmitter } from 'events';
import type { Job, JobResult } from './types';
import { backoff, sleep } from './retry';

export interface SchedulerOptions {
  concurrency: number;
  maxAttempts: number;
  onError?: (job: Job, error: unknown) => void;
}

const DEFAULTS: SchedulerOptions = {
  concurrency: 4,
  maxAttempts: 3,
};

export class Scheduler extends EventEmitter {
  private queue: Job[] = [];
  private running = 0;
  private readonly options: SchedulerOptions;

  constructor(options: Partial<SchedulerOptions> = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
  }

  submit(job: Job): void {
    this.queue.push(job);
    this.emit('submitted', job.id);
    void this.pump();
  }

  get pending(): number {
    return this.queue.length;
  }

  private async pump(): Promise<void> {
    while (this.running < this.options.concurrency && this.queue.length > 0) {
      const job = this.queue.shift()!;
      this.running += 1;
      this.execute(job).finally(() => {
        this.running -= 1;
        void this.pump();
      });
    }
  }

  private async execute(job: Job): Promise<JobResult> {
    let attempt = 0;
    for (;;) {
      try {
        const value = await job.run();
        this.emit('done', job.id, value);
        return { id: job.id, ok: true, value };
      } catch (error) {
        attempt += 1;
        this.options.onError?.(job, error);
        if (attempt >= this.options.maxAttempts) {
          return { id: job.id, ok: false, error: String(error) };
        }
        const delay = backoff(attempt);
        await sleep($0);
      }
    }
  }
}
"#;

const TS_LIB: &str = r#"/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Exponential backoff with jitter, in milliseconds, before retry number `attempt` (from 1). */
export function backoff(attempt: number, base = 100, cap = 10_000): number {
  const exp = Math.min(cap, base * 2 ** (attempt - 1));
  return Math.round(exp / 2 + Math.random() * (exp / 2));
}

export type RetryPolicy = { attempts: number; base: number };
"#;

const TS_OPEN: &str = r#"import { backoff, sleep } from './retry';

export async function withRetries<T>(run: () => Promise<T>, maxAttempts: number): Promise<T> {
  let attempt = 0;
  for (;;) {
    try {
      return await run();
    } catch (error) {
      attempt += 1;
      if (attempt >= maxAttempts) {
        throw error;
      }
      await sleep(backoff(attempt));
    }
  }
}
"#;

#[test]
fn tsx_component_jsx() {
    check(
        "tsx",
        expect![[r#"
            single-line | window from line 33 of 64 | 346 tokens
            --- snippet src/components/Avatar.tsx
            /** A round user picture. */
            export function Avatar({ url, size = 24, alt = '' }: AvatarProps)
            --- snippet src/components/TeamList.tsx
                    <li key={team.id}>
                      <Avatar url={team.logoUrl} size={24} />
                      <span>{team.name}</span>
                    </li>
                  ))}
                </ul>
              );
            }
            --- header
            import React, { useEffect, useMemo, useState } from 'react';
            import { fetchUsers, type User } from '../api/users';
            import { Avatar } from './Avatar';

            export const UserList = ({ teamId, pageSize = 20, onSelect }: UserListProps) => {
              // ...
            --- window
                  .catch((e: Error) => setError(e.message));
                return () => {
                  cancelled = true;
                };
              }, [teamId, pageSize]);

              const sorted = useMemo(
                () => [...users].sort((a, b) => compareUsers(a, b, sortKey)),
                [users, sortKey],
              );

              if (error) {
                return <p className="error">Could not load the team: {error}</p>;
              }

              return (
                <div className="user-list">
                  <header>
                    <button onClick={() => setSortKey('name')}>By name</button>
                    <button onClick={() => setSortKey('joined')}>By date</button>
                  </header>
                  <ul>
                    {sorted.map((user) => (
                      <li key={user.id} onClick={() => onSelect?.(user)}>
                        <Avatar url={user.avatarUrl} size={32} />
                        <span>{$0}</span>
                      </li>
                    ))}
                  </ul>
                </div>
              );
            };
            --- end
        "#]],
    );
}

const TSX_DOC: &str = r#"import React, { useEffect, useMemo, useState } from 'react';
import { fetchUsers, type User } from '../api/users';
import { Avatar } from './Avatar';

type SortKey = 'name' | 'joined';

interface UserListProps {
  teamId: string;
  pageSize?: number;
  onSelect?: (user: User) => void;
}

function compareUsers(a: User, b: User, key: SortKey): number {
  if (key === 'joined') {
    return a.joinedAt.getTime() - b.joinedAt.getTime();
  }
  return a.name.localeCompare(b.name);
}

export const UserList = ({ teamId, pageSize = 20, onSelect }: UserListProps) => {
  const [users, setUsers] = useState<User[]>([]);
  const [sortKey, setSortKey] = useState<SortKey>('name');
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let cancelled = false;
    fetchUsers(teamId, { limit: pageSize })
      .then((page) => {
        if (!cancelled) {
          setUsers(page.users);
        }
      })
      .catch((e: Error) => setError(e.message));
    return () => {
      cancelled = true;
    };
  }, [teamId, pageSize]);

  const sorted = useMemo(
    () => [...users].sort((a, b) => compareUsers(a, b, sortKey)),
    [users, sortKey],
  );

  if (error) {
    return <p className="error">Could not load the team: {error}</p>;
  }

  return (
    <div className="user-list">
      <header>
        <button onClick={() => setSortKey('name')}>By name</button>
        <button onClick={() => setSortKey('joined')}>By date</button>
      </header>
      <ul>
        {sorted.map((user) => (
          <li key={user.id} onClick={() => onSelect?.(user)}>
            <Avatar url={user.avatarUrl} size={32} />
            <span>{$0}</span>
          </li>
        ))}
      </ul>
    </div>
  );
};
"#;

const TSX_LIB: &str = r#"import React from 'react';

export interface AvatarProps {
  url: string;
  size?: number;
  alt?: string;
}

/** A round user picture. */
export function Avatar({ url, size = 24, alt = '' }: AvatarProps) {
  return <img className="avatar" src={url} width={size} height={size} alt={alt} />;
}
"#;

const TSX_OPEN: &str = r#"import React from 'react';
import { Avatar } from './Avatar';
import type { Team } from '../api/teams';

export function TeamList({ teams }: { teams: Team[] }) {
  return (
    <ul>
      {teams.map((team) => (
        <li key={team.id}>
          <Avatar url={team.logoUrl} size={24} />
          <span>{team.name}</span>
        </li>
      ))}
    </ul>
  );
}
"#;

#[test]
fn go_method_handler() {
    check(
        "go",
        expect![[r#"
            multi-line | window from line 49 of 77 | 345 tokens
            --- snippet server/response.go
            // nextCursor is the cursor of the page after products, empty on the last page.
            func nextCursor(products []store.Product, limit int) string

            // SearchResponse is the body of GET /products.
            type SearchResponse struct {
            	Query    string          `json:"query"`
            	Products []store.Product `json:"products"`
            	Next     string          `json:"next,omitempty"`
            }
            --- header
            package server
            import (
            	"encoding/json"
            	"errors"
            	"net/http"
            	"strconv"

            	"example.com/shop/store"
            )

            func (s *Server) handleProduct(w http.ResponseWriter, r *http.Request) {
            	// ...
            --- window
            		return
            	}
            	writeJSON(w, http.StatusOK, product)
            }

            // handleSearch answers GET /products?q=...&limit=...
            func (s *Server) handleSearch(w http.ResponseWriter, r *http.Request) {
            	query := r.URL.Query().Get("q")
            	limit := s.limit
            	if v := r.URL.Query().Get("limit"); v != "" {
            		n, err := strconv.Atoi(v)
            		if err != nil || n <= 0 {
            			http.Error(w, "bad limit", http.StatusBadRequest)
            			return
            		}
            		limit = min(n, s.limit)
            	}
            	products, err := s.store.Search(r.Context(), query, limit)
            	if err != nil {
            		s.logger.Printf("search %q: %v", query, err)
            		http.Error(w, "internal error", http.StatusInternalServerError)
            		return
            	}
            	resp := SearchResponse{Query: query, Products: products, Next: nextCursor(products, limit)}
            	if len(products) == 0 {
            		$0
            	}
            	writeJSON(w, http.StatusOK, resp)
            }
            --- end
        "#]],
    );
}

const GO_DOC: &str = "package server

import (
\t\"encoding/json\"
\t\"errors\"
\t\"net/http\"
\t\"strconv\"

\t\"example.com/shop/store\"
)

// Server serves the shop's HTTP API.
type Server struct {
\tstore  *store.Store
\tlogger Logger
\tlimit  int
}

// Logger is what handlers log to.
type Logger interface {
\tPrintf(format string, args ...any)
}

func NewServer(s *store.Store, logger Logger) *Server {
\treturn &Server{store: s, logger: logger, limit: 50}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
\tw.Header().Set(\"Content-Type\", \"application/json\")
\tw.WriteHeader(status)
\t_ = json.NewEncoder(w).Encode(v)
}

// handleProduct answers GET /products/{id}.
func (s *Server) handleProduct(w http.ResponseWriter, r *http.Request) {
\tid, err := strconv.Atoi(r.PathValue(\"id\"))
\tif err != nil {
\t\thttp.Error(w, \"bad product id\", http.StatusBadRequest)
\t\treturn
\t}
\tproduct, err := s.store.Product(r.Context(), id)
\tif errors.Is(err, store.ErrNotFound) {
\t\thttp.NotFound(w, r)
\t\treturn
\t}
\tif err != nil {
\t\ts.logger.Printf(\"product %d: %v\", id, err)
\t\thttp.Error(w, \"internal error\", http.StatusInternalServerError)
\t\treturn
\t}
\twriteJSON(w, http.StatusOK, product)
}

// handleSearch answers GET /products?q=...&limit=...
func (s *Server) handleSearch(w http.ResponseWriter, r *http.Request) {
\tquery := r.URL.Query().Get(\"q\")
\tlimit := s.limit
\tif v := r.URL.Query().Get(\"limit\"); v != \"\" {
\t\tn, err := strconv.Atoi(v)
\t\tif err != nil || n <= 0 {
\t\t\thttp.Error(w, \"bad limit\", http.StatusBadRequest)
\t\t\treturn
\t\t}
\t\tlimit = min(n, s.limit)
\t}
\tproducts, err := s.store.Search(r.Context(), query, limit)
\tif err != nil {
\t\ts.logger.Printf(\"search %q: %v\", query, err)
\t\thttp.Error(w, \"internal error\", http.StatusInternalServerError)
\t\treturn
\t}
\tresp := SearchResponse{Query: query, Products: products, Next: nextCursor(products, limit)}
\tif len(products) == 0 {
\t\t$0
\t}
\twriteJSON(w, http.StatusOK, resp)
}
";

const GO_LIB: &str = "package server

import \"example.com/shop/store\"

// SearchResponse is the body of GET /products.
type SearchResponse struct {
\tQuery    string          `json:\"query\"`
\tProducts []store.Product `json:\"products\"`
\tNext     string          `json:\"next,omitempty\"`
}

// nextCursor is the cursor of the page after products, empty on the last page.
func nextCursor(products []store.Product, limit int) string {
\tif len(products) < limit {
\t\treturn \"\"
\t}
\treturn products[len(products)-1].ID
}
";

const GO_OPEN: &str = "package server

import \"net/http\"

// handleOrders answers GET /orders.
func (s *Server) handleOrders(w http.ResponseWriter, r *http.Request) {
\torders, err := s.store.Orders(r.Context())
\tif err != nil {
\t\ts.logger.Printf(\"orders: %v\", err)
\t\thttp.Error(w, \"internal error\", http.StatusInternalServerError)
\t\treturn
\t}
\twriteJSON(w, http.StatusOK, orders)
}
";

#[test]
fn java_method_in_a_nested_class() {
    check(
        "java",
        expect![[r#"
            single-line | window from line 53 of 75 | 382 tokens
            --- snippet src/main/java/com/example/library/Fees.java
            /** Cents as a price, e.g. "1.25". */
            public static String format(long cents)

            /** Late fees. */
            public final class Fees

            private Fees()
            --- snippet src/main/java/com/example/library/Reports.java
                    StringBuilder out = new StringBuilder();
                    for (String line : lines) {
                        out.append(line).append('\n');
                    }
                    out.append("Total: ").append(Fees.format(totalCents));
                    return out.toString();
                }
            }
            --- header
            package com.example.library;
            import java.time.Clock;
            import java.time.Duration;
            import java.time.Instant;
            import java.util.ArrayList;
            import java.util.List;
            import java.util.Optional;

            public class LoanService {
                // ...
                public static final class FeeReport {
                    // ...
            --- window
                    private long totalCents;

                    void add(Loan loan, Instant now) {
                        long days = Duration.between(loan.dueAt(), now).toDays();
                        if (days <= 0) {
                            return;
                        }
                        long fee = Fees.lateFee(days, loan.isbn());
                        totalCents += fee;
                        lines.add(String.format("%s %s: %d days", loan.memberId(), loan.isbn(), days));
                    }

                    public String render() {
                        StringBuilder out = new StringBuilder();
                        for (String line : lines) {
                            out.append(line).append('\n');
                        }
                        String total = Fees.format(totalCents);
                        out.append("Total: ").append($0);
                        return out.toString();
                    }
                }
            }
            --- end
        "#]],
    );
}

const JAVA_DOC: &str = r#"package com.example.library;

import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;

import com.example.library.model.Book;
import com.example.library.model.Loan;

/** Lends books to members and tracks overdue loans. */
public class LoanService {
    private static final Duration LOAN_PERIOD = Duration.ofDays(21);
    private static final int MAX_LOANS = 5;

    private final LoanRepository loans;
    private final Clock clock;

    public LoanService(LoanRepository loans, Clock clock) {
        this.loans = loans;
        this.clock = clock;
    }

    /** Lends {@code book} to the member, if they may borrow more. */
    public Optional<Loan> lend(Book book, String memberId) {
        if (loans.activeFor(memberId).size() >= MAX_LOANS) {
            return Optional.empty();
        }
        Instant now = clock.instant();
        Loan loan = new Loan(book.isbn(), memberId, now, now.plus(LOAN_PERIOD));
        loans.save(loan);
        return Optional.of(loan);
    }

    /** The loans past their due date, oldest first. */
    public List<Loan> overdue() {
        Instant now = clock.instant();
        List<Loan> result = new ArrayList<>();
        for (Loan loan : loans.all()) {
            if (loan.returnedAt() == null && loan.dueAt().isBefore(now)) {
                result.add(loan);
            }
        }
        result.sort((a, b) -> a.dueAt().compareTo(b.dueAt()));
        return result;
    }

    /** Late fees per member, as a report. */
    public static final class FeeReport {
        private final List<String> lines = new ArrayList<>();
        private long totalCents;

        void add(Loan loan, Instant now) {
            long days = Duration.between(loan.dueAt(), now).toDays();
            if (days <= 0) {
                return;
            }
            long fee = Fees.lateFee(days, loan.isbn());
            totalCents += fee;
            lines.add(String.format("%s %s: %d days", loan.memberId(), loan.isbn(), days));
        }

        public String render() {
            StringBuilder out = new StringBuilder();
            for (String line : lines) {
                out.append(line).append('\n');
            }
            String total = Fees.format(totalCents);
            out.append("Total: ").append($0);
            return out.toString();
        }
    }
}
"#;

const JAVA_LIB: &str = r#"package com.example.library;

/** Late fees. */
public final class Fees {
    /** Cents per day late. */
    public static final long DAILY_CENTS = 25;

    private Fees() {}

    /** The fee for a loan {@code days} late; reference books cost double. */
    public static long lateFee(long days, String isbn) {
        long fee = days * DAILY_CENTS;
        return isbn.startsWith("978-0") ? fee * 2 : fee;
    }

    /** Cents as a price, e.g. "1.25". */
    public static String format(long cents) {
        return String.format("%d.%02d", cents / 100, cents % 100);
    }
}
"#;

const JAVA_OPEN: &str = r#"package com.example.library;

import java.util.List;

final class Reports {
    private Reports() {}

    static String summary(List<String> lines, long totalCents) {
        StringBuilder out = new StringBuilder();
        for (String line : lines) {
            out.append(line).append('\n');
        }
        out.append("Total: ").append(Fees.format(totalCents));
        return out.toString();
    }
}
"#;

#[test]
fn c_function() {
    check(
        "c",
        expect![[r#"
            single-line | window from line 49 of 76 | 336 tokens
            --- snippet src/util.h
            #define LOG_DEBUG(...) fprintf(stderr, __VA_ARGS__)

            #define LOG_DEBUG(...) ((void)0)
            --- snippet src/ringbuf.c
            static size_t advance(const struct ringbuf *rb, size_t index, size_t by)
            --- snippet src/linebuf.c
                size_t i;
                for (i = 0; i < limit; i++) {
                    if (buf[i] == '\n') {
                        return i + 1;
                    }
                }
                LOG_DEBUG("no line in %zu bytes\n", limit);
                return 0;
            --- header
            #include <stddef.h>
            #include <stdint.h>
            #include <string.h>
            #include "ringbuf.h"
            #include "util.h"

            size_t ringbuf_write(struct ringbuf *rb, const uint8_t *src, size_t len) {
                // ...
            --- window
                return n;
            }

            size_t ringbuf_read(struct ringbuf *rb, uint8_t *dst, size_t len)
            {
                size_t n = MIN(len, rb->count);
                size_t first = MIN(n, rb->capacity - rb->tail);
                memcpy(dst, rb->data + rb->tail, first);
                memcpy(dst + first, rb->data, n - first);
                rb->tail = advance(rb, rb->tail, n);
                rb->count -= n;
                return n;
            }

            size_t ringbuf_peek_line(const struct ringbuf *rb, uint8_t *dst, size_t len)
            {
                size_t limit = MIN(len, rb->count);
                size_t i;
                for (i = 0; i < limit; i++) {
                    uint8_t c = rb->data[advance(rb, rb->tail, i)];
                    dst[i] = c;
                    if (c == '\n') {
                        return i + 1;
                    }
                }
                LOG_DEBUG("no line in %zu bytes\n", limit);
                return $0
            }
            --- end
        "#]],
    );
}

const C_DOC: &str = r#"/* A fixed-size ring buffer of bytes, for the UART driver. */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ringbuf.h"
#include "util.h"

struct ringbuf {
    uint8_t *data;
    size_t capacity;
    size_t head;
    size_t tail;
    size_t count;
};

static size_t advance(const struct ringbuf *rb, size_t index, size_t by)
{
    return (index + by) % rb->capacity;
}

int ringbuf_init(struct ringbuf *rb, uint8_t *storage, size_t capacity)
{
    if (rb == NULL || storage == NULL || capacity == 0) {
        return -1;
    }
    rb->data = storage;
    rb->capacity = capacity;
    rb->head = 0;
    rb->tail = 0;
    rb->count = 0;
    return 0;
}

size_t ringbuf_free(const struct ringbuf *rb)
{
    return rb->capacity - rb->count;
}

size_t ringbuf_write(struct ringbuf *rb, const uint8_t *src, size_t len)
{
    size_t n = MIN(len, ringbuf_free(rb));
    size_t first = MIN(n, rb->capacity - rb->head);
    memcpy(rb->data + rb->head, src, first);
    memcpy(rb->data, src + first, n - first);
    rb->head = advance(rb, rb->head, n);
    rb->count += n;
    return n;
}

size_t ringbuf_read(struct ringbuf *rb, uint8_t *dst, size_t len)
{
    size_t n = MIN(len, rb->count);
    size_t first = MIN(n, rb->capacity - rb->tail);
    memcpy(dst, rb->data + rb->tail, first);
    memcpy(dst + first, rb->data, n - first);
    rb->tail = advance(rb, rb->tail, n);
    rb->count -= n;
    return n;
}

size_t ringbuf_peek_line(const struct ringbuf *rb, uint8_t *dst, size_t len)
{
    size_t limit = MIN(len, rb->count);
    size_t i;
    for (i = 0; i < limit; i++) {
        uint8_t c = rb->data[advance(rb, rb->tail, i)];
        dst[i] = c;
        if (c == '\n') {
            return i + 1;
        }
    }
    LOG_DEBUG("no line in %zu bytes\n", limit);
    return $0
}
"#;

const C_LIB: &str = r#"#ifndef UTIL_H
#define UTIL_H

#include <stdio.h>

/* The smaller of two values (evaluates them twice). */
#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* Logs to stderr in debug builds only. */
#ifdef DEBUG
#define LOG_DEBUG(...) fprintf(stderr, __VA_ARGS__)
#else
#define LOG_DEBUG(...) ((void)0)
#endif

#endif
"#;

const C_OPEN: &str = r#"#include <stddef.h>
#include <stdint.h>

#include "util.h"

size_t line_length(const uint8_t *buf, size_t len)
{
    size_t limit = MIN(len, 256);
    size_t i;
    for (i = 0; i < limit; i++) {
        if (buf[i] == '\n') {
            return i + 1;
        }
    }
    LOG_DEBUG("no line in %zu bytes\n", limit);
    return 0;
}
"#;

#[test]
fn cpp_method_in_a_class_in_namespaces() {
    check(
        "cpp",
        expect![[r#"
            single-line | window from line 46 of 84 | 375 tokens
            --- snippet src/tile.h
            /// Memory a tile holds, in bytes.
            inline std::size_t tile_bytes(const Tile &tile)

            /// A decoded raster tile.
            struct Tile
            --- snippet src/glyph_cache.cpp
            void GlyphCache::evict_one() {
                const Entry &last = order_.back();
                const std::size_t freed = last.glyph->bytes();
                bytes_ -= freed;
                ++evictions_;
                log_eviction(last.key, freed);
                index_.erase(last.key);
                order_.pop_back();
            --- header
            #include <cstddef>
            #include <list>
            #include <memory>
            #include <unordered_map>
            #include "tile.h"

            namespace maps {
                // ...
            namespace cache {
                // ...
            class TileCache {
                // ...
                void put(int zoom, int x, int y, std::shared_ptr<const Tile> tile) {
                    // ...
            --- window
                        evict_one();
                    }
                    bytes_ += tile_bytes(*tile);
                    order_.push_front(Entry{key, std::move(tile)});
                    index_.emplace(key, order_.begin());
                }

                double hit_rate() const {
                    const auto total = hits_ + misses_;
                    return total == 0 ? 0.0 : static_cast<double>(hits_) / total;
                }

            private:
                struct Entry {
                    TileKey key;
                    std::shared_ptr<const Tile> tile;
                };

                void evict_one() {
                    const Entry &last = order_.back();
                    const std::size_t freed = tile_bytes(*last.tile);
                    bytes_ -= freed;
                    ++evictions_;
                    log_eviction(last.key, $0);
                    index_.erase(last.key);
                    order_.pop_back();
                }

                std::size_t capacity_;
                std::size_t bytes_ = 0;
                std::size_t hits_ = 0;
            --- end
        "#]],
    );
}

const CPP_DOC: &str = r#"// An LRU cache of decoded tiles for the map renderer.

#include <cstddef>
#include <list>
#include <memory>
#include <unordered_map>

#include "tile.h"

namespace maps {
namespace cache {

using TileKey = std::uint64_t;

/// Packs zoom, x and y into one key.
inline TileKey make_key(int zoom, int x, int y) {
    return (static_cast<TileKey>(zoom) << 48) | (static_cast<TileKey>(x) << 24) | static_cast<TileKey>(y);
}

class TileCache {
public:
    explicit TileCache(std::size_t capacity) : capacity_(capacity) {}

    std::size_t size() const { return index_.size(); }

    std::shared_ptr<const Tile> get(int zoom, int x, int y) {
        auto it = index_.find(make_key(zoom, x, y));
        if (it == index_.end()) {
            ++misses_;
            return nullptr;
        }
        ++hits_;
        order_.splice(order_.begin(), order_, it->second);
        return it->second->tile;
    }

    void put(int zoom, int x, int y, std::shared_ptr<const Tile> tile) {
        const TileKey key = make_key(zoom, x, y);
        auto it = index_.find(key);
        if (it != index_.end()) {
            it->second->tile = std::move(tile);
            order_.splice(order_.begin(), order_, it->second);
            return;
        }
        if (index_.size() == capacity_) {
            evict_one();
        }
        bytes_ += tile_bytes(*tile);
        order_.push_front(Entry{key, std::move(tile)});
        index_.emplace(key, order_.begin());
    }

    double hit_rate() const {
        const auto total = hits_ + misses_;
        return total == 0 ? 0.0 : static_cast<double>(hits_) / total;
    }

private:
    struct Entry {
        TileKey key;
        std::shared_ptr<const Tile> tile;
    };

    void evict_one() {
        const Entry &last = order_.back();
        const std::size_t freed = tile_bytes(*last.tile);
        bytes_ -= freed;
        ++evictions_;
        log_eviction(last.key, $0);
        index_.erase(last.key);
        order_.pop_back();
    }

    std::size_t capacity_;
    std::size_t bytes_ = 0;
    std::size_t hits_ = 0;
    std::size_t misses_ = 0;
    std::size_t evictions_ = 0;
    std::list<Entry> order_;
    std::unordered_map<TileKey, std::list<Entry>::iterator> index_;
};

}  // namespace cache
}  // namespace maps
"#;

const CPP_LIB: &str = r#"#pragma once

#include <cstdint>
#include <vector>

namespace maps {

/// A decoded raster tile.
struct Tile {
    int zoom;
    int x;
    int y;
    std::vector<std::uint8_t> pixels;
};

/// Memory a tile holds, in bytes.
inline std::size_t tile_bytes(const Tile &tile) {
    return sizeof(Tile) + tile.pixels.capacity();
}

/// Logs an eviction in debug builds.
void log_eviction(std::uint64_t key, std::size_t bytes);

}  // namespace maps
"#;

const CPP_OPEN: &str = r#"#include "glyph_cache.h"

namespace maps {

void GlyphCache::evict_one() {
    const Entry &last = order_.back();
    const std::size_t freed = last.glyph->bytes();
    bytes_ -= freed;
    ++evictions_;
    log_eviction(last.key, freed);
    index_.erase(last.key);
    order_.pop_back();
}

}  // namespace maps
"#;

#[test]
fn plain_text_notes() {
    check(
        "plaintext",
        expect![[r#"
            single-line | window from line 17 of 45 | 315 tokens
            --- snippet docs/HOTFIX.txt

            1. Fix it on main, then cherry-pick the fix to the release branch.
            2. Tag X.Y.Z on the release branch and push the tag.
            3. Check that the packages reached the public registry and the mirrors.
            4. Add a line to the changelog and to the release issue.
            --- header
            --- window
            The freeze
            ----------

            From the freeze on, only fixes for regressions are merged. Each one needs
            a second review from a maintainer of the component it touches.

            1. Create the branch release/X.Y from main.
            2. Bump the version in Cargo.toml and package.json on the branch.
            3. Tag the first candidate X.Y.0-rc.1 and push the tag.
            4. The pipeline builds the candidate and publishes it to the staging
               registry.

            Testing the candidate
            ---------------------

            1. Install the candidate from the staging registry on a clean machine.
            2. Run the smoke tests: scripts/smoke.sh --registry staging.
            3. Walk through the upgrade guide with last release's data.
            4. Record the results in the release issue.

            If a test fails, fix it on main, cherry-pick the fix to the release
            branch and tag the next candidate.

            Publishing
            ----------

            1. Tag X.Y.0 on the release branch and push the tag.
            2. Check that the packages reached $0
            3. Publish the announcement on the blog and the mailing list.
            --- end
        "#]],
    );
}

const TEXT_DOC: &str = r#"Releasing
=========

Releases are cut from the main branch every second Tuesday. The release
manager of the week owns the whole process, from the freeze to the
announcement.

Before the freeze
-----------------

1. Check that the nightly build has been green for three days.
2. Merge or postpone every pull request labelled "release-blocker".
3. Update the changelog: one line per user-visible change, grouped by
   component, newest first.
4. Ask the documentation team whether the guides are up to date.

The freeze
----------

From the freeze on, only fixes for regressions are merged. Each one needs
a second review from a maintainer of the component it touches.

1. Create the branch release/X.Y from main.
2. Bump the version in Cargo.toml and package.json on the branch.
3. Tag the first candidate X.Y.0-rc.1 and push the tag.
4. The pipeline builds the candidate and publishes it to the staging
   registry.

Testing the candidate
---------------------

1. Install the candidate from the staging registry on a clean machine.
2. Run the smoke tests: scripts/smoke.sh --registry staging.
3. Walk through the upgrade guide with last release's data.
4. Record the results in the release issue.

If a test fails, fix it on main, cherry-pick the fix to the release
branch and tag the next candidate.

Publishing
----------

1. Tag X.Y.0 on the release branch and push the tag.
2. Check that the packages reached $0
3. Publish the announcement on the blog and the mailing list.
"#;

const TEXT_OPEN: &str = r#"Hotfix releases
===============

A hotfix skips the freeze but not the candidate.

1. Fix it on main, then cherry-pick the fix to the release branch.
2. Tag X.Y.Z on the release branch and push the tag.
3. Check that the packages reached the public registry and the mirrors.
4. Add a line to the changelog and to the release issue.
"#;

/// Inserts `typed` one character at a time at the cursor of every case and checks that the
/// prompt up to the start of the cursor's line stays byte-identical: the engine's prefix cache
/// holds on while the user types.
#[test]
fn typing_on_the_cursor_line_keeps_the_prompt_start() {
    for (name, case) in all_cases() {
        let (text, offset) = split_marker(case.doc.text);
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let stable = |text: &str, offset: usize| {
            let ctx = build_at(&case, text, offset);
            let prompt = render(&case, &ctx);
            let at = prompt
                .find("<|fim_suffix|>")
                .expect("the qwen template has a suffix marker");
            let cut = at - (offset - line_start);
            (ctx.window_start, prompt[..cut].to_owned())
        };
        let before = stable(&text, offset);
        let mut typed = text.clone();
        let mut cursor = offset;
        for ch in "count.min(limit)".chars() {
            typed.insert(cursor, ch);
            cursor += ch.len_utf8();
            let after = stable(&typed, cursor);
            assert_eq!(
                after.0,
                before.0,
                "{name}: the window moved after typing {:?}",
                &typed[offset..cursor]
            );
            assert_eq!(
                after.1,
                before.1,
                "{name}: the prompt start changed after typing {:?}",
                &typed[offset..cursor]
            );
        }
    }
}

#[test]
fn snippets_still_chosen_keep_their_previous_order() {
    // The same snippets in a new order would change the prompt from the first one on,
    // and with it every cached token after it: the previous order wins.
    let mut checked = 0;
    for (name, case) in all_cases() {
        let (text, offset) = split_marker(case.doc.text);
        let fresh = build_at(&case, &text, offset);
        if fresh.snippets.len() < 2 {
            continue;
        }
        let mut previous = fresh.snippets.clone();
        previous.reverse();
        // One that is no longer chosen is left out.
        previous.insert(
            1,
            tessera_lsp::template::Snippet {
                path: "gone.rs".into(),
                text: "fn gone() {}".into(),
            },
        );
        let again = build_after(&case, &text, offset, &previous);
        let mut want = fresh.snippets.clone();
        want.reverse();
        assert_eq!(again.snippets, want, "{name}");
        assert_eq!((again.prefix, again.suffix), (fresh.prefix, fresh.suffix), "{name}");
        checked += 1;
    }
    assert!(checked > 0, "a case has several snippets");
}

#[test]
fn a_cursor_past_the_end_or_inside_a_character_is_clamped() {
    let text = "fn main() {\n    let s = \"héllo 😀\";\n}\n";
    let snapshot = Document::new("src/main.rs", Language::Rust, 1, text.to_owned()).snapshot();
    let build = |offset: usize| {
        context::build(
            &ContextSettings::default(),
            &ContextInputs {
                doc: &snapshot,
                offset,
                path: "src/main.rs",
                others: &[],
                index: None,
                count_tokens: &count_tokens,
                previous_snippets: &[],
            },
        )
    };
    for offset in [text.len(), text.len() + 1, usize::MAX] {
        let ctx = build(offset);
        assert_eq!(
            (ctx.prefix.as_str(), ctx.suffix.as_str()),
            (text, ""),
            "offset {offset}"
        );
    }
    let e = text.find('é').unwrap();
    let ctx = build(e + 1);
    assert_eq!(ctx.prefix, text[..e], "inside é: snapped to its start");
    assert_eq!(ctx.suffix, text[e..]);
    let smiley = text.find('😀').unwrap();
    for inside in 1..4 {
        let ctx = build(smiley + inside);
        assert_eq!(ctx.prefix, text[..smiley]);
        assert_eq!(ctx.suffix, text[smiley..]);
    }
    // Without a tree, too.
    let plain = Document::new("notes.txt", Language::PlainText, 1, "naïve".to_owned()).snapshot();
    let ctx = context::build(
        &ContextSettings::default(),
        &ContextInputs {
            doc: &plain,
            offset: 3,
            path: "notes.txt",
            others: &[],
            index: None,
            count_tokens: &count_tokens,
            previous_snippets: &[],
        },
    );
    assert_eq!((ctx.prefix.as_str(), ctx.suffix.as_str()), ("na", "ïve"));
}

fn case(name: &str) -> Case {
    all_cases()
        .into_iter()
        .find_map(|(n, case)| (n == name).then_some(case))
        .expect("a case of that name")
}

fn all_cases() -> Vec<(&'static str, Case)> {
    let file = |path, language, text| File { path, language, text };
    let case = |doc, library, open| Case {
        doc,
        library: Some(library),
        open,
    };
    use Language::*;
    vec![
        (
            "rust",
            case(
                file("src/server.rs", Rust, RUST_DOC),
                file("src/util.rs", Rust, RUST_LIB),
                file("src/client.rs", Rust, RUST_OPEN),
            ),
        ),
        (
            "python",
            case(
                file("app/orders.py", Python, PYTHON_DOC),
                file("app/pricing.py", Python, PYTHON_LIB),
                file("app/invoices.py", Python, PYTHON_OPEN),
            ),
        ),
        (
            "javascript",
            case(
                file("src/cart.js", JavaScript, JS_DOC),
                file("src/format.js", JavaScript, JS_LIB),
                file("src/wishlist.js", JavaScript, JS_OPEN),
            ),
        ),
        (
            "typescript",
            case(
                file("src/scheduler.ts", TypeScript, TS_DOC),
                file("src/retry.ts", TypeScript, TS_LIB),
                file("src/worker.ts", TypeScript, TS_OPEN),
            ),
        ),
        (
            "tsx",
            case(
                file("src/components/UserList.tsx", Tsx, TSX_DOC),
                file("src/components/Avatar.tsx", Tsx, TSX_LIB),
                file("src/components/TeamList.tsx", Tsx, TSX_OPEN),
            ),
        ),
        (
            "go",
            case(
                file("server/handlers.go", Go, GO_DOC),
                file("server/response.go", Go, GO_LIB),
                file("server/orders.go", Go, GO_OPEN),
            ),
        ),
        (
            "java",
            case(
                file("src/main/java/com/example/library/LoanService.java", Java, JAVA_DOC),
                file("src/main/java/com/example/library/Fees.java", Java, JAVA_LIB),
                file("src/main/java/com/example/library/Reports.java", Java, JAVA_OPEN),
            ),
        ),
        (
            "c",
            case(
                file("src/ringbuf.c", C, C_DOC),
                file("src/util.h", C, C_LIB),
                file("src/linebuf.c", C, C_OPEN),
            ),
        ),
        (
            "cpp",
            case(
                file("src/tile_cache.cpp", Cpp, CPP_DOC),
                file("src/tile.h", Cpp, CPP_LIB),
                file("src/glyph_cache.cpp", Cpp, CPP_OPEN),
            ),
        ),
        (
            "plaintext",
            Case {
                doc: file("docs/RELEASING.txt", PlainText, TEXT_DOC),
                library: None,
                open: file("docs/HOTFIX.txt", PlainText, TEXT_OPEN),
            },
        ),
    ]
}
