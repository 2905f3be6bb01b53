//! Filters in feature specs: which events a feature counts.
//!
//! `count(card, 10m, amount < 1000)` counts only the small payments;
//! `sum(account, amount, 24h, kind = transfer and channel in (alipay, wechat))`
//! sums only those transfers. A filter is evaluated by the host once per
//! event and series, before the event is added; the feature's value at an
//! event is over the key's matching events, whether or not the event
//! itself matches.
//!
//! ```text
//! filter := or
//! or     := and ("or" and)*
//! and    := not ("and" not)*
//! not    := "not" not | "(" filter ")" | FIELD OP VALUE | FIELD ["not"] "in" "(" VALUE ("," VALUE)* ")"
//! OP     := = | != | < | <= | > | >=
//! ```
//!
//! A comparison with a field the event lacks (no card, no merchant) is
//! false, as in SQL; `not` of it is true.

use std::fmt;
use vigil_abi::{Channel, Kind};

use crate::event::Payment;

/// A field a filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `amount`: minor units of the payment's currency.
    Amount,
    /// `kind`: purchase, refund, transfer, cash_out, cash_in, payout.
    Kind,
    /// `channel`: card, alipay, wechat, bank_transfer, wallet.
    Channel,
    /// `currency`: ISO 4217.
    Currency,
    /// `card.present`: true or false.
    CardPresent,
    /// `card.country`: ISO 3166 alpha-2.
    CardCountry,
    /// `merchant.country`.
    MerchantCountry,
    /// `merchant.mcc`: merchant category code.
    Mcc,
    /// `geo.country`: where the payment was made.
    GeoCountry,
    /// `counterparty.country`.
    CounterpartyCountry,
}

impl Field {
    const ALL: [(&'static str, Field); 10] = [
        ("amount", Field::Amount),
        ("kind", Field::Kind),
        ("channel", Field::Channel),
        ("currency", Field::Currency),
        ("card.present", Field::CardPresent),
        ("card.country", Field::CardCountry),
        ("merchant.country", Field::MerchantCountry),
        ("merchant.mcc", Field::Mcc),
        ("geo.country", Field::GeoCountry),
        ("counterparty.country", Field::CounterpartyCountry),
    ];

    /// Its name in specs.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, f)| *f == self).map_or("?", |(n, _)| n)
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// Whether `<`, `<=`, `>` and `>=` apply.
    fn ordered(self) -> bool {
        matches!(self, Field::Amount | Field::Mcc)
    }
}

/// A value compared with, resolved when the spec is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// An amount or a category code.
    Int(i64),
    /// A payment kind.
    Kind(Kind),
    /// A channel.
    Channel(Channel),
    /// A currency or a country code, upper case, zero-padded.
    Code([u8; 3]),
    /// Card presence.
    Bool(bool),
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Filter {
    /// `FIELD OP VALUE`.
    Cmp(Field, Op, Value),
    /// `FIELD in (VALUE, …)`.
    In(Field, Vec<Value>),
    /// `not F`.
    Not(Box<Filter>),
    /// `A and B and …`.
    And(Vec<Filter>),
    /// `A or B or …`.
    Or(Vec<Filter>),
}

fn field_value(p: &Payment, field: Field) -> Option<Value> {
    let code2 = |c: vigil_abi::Country| Value::Code([c.0[0], c.0[1], 0]);
    Some(match field {
        Field::Amount => Value::Int(p.amount),
        Field::Kind => Value::Kind(p.kind),
        Field::Channel => Value::Channel(p.channel),
        Field::Currency => Value::Code(p.currency),
        Field::CardPresent => Value::Bool(p.card.as_ref()?.present?),
        Field::CardCountry => code2(p.card.as_ref()?.country?),
        Field::MerchantCountry => code2(p.merchant.as_ref()?.country?),
        Field::Mcc => Value::Int(i64::from(p.merchant.as_ref()?.mcc?)),
        Field::GeoCountry => code2(p.geo.as_ref()?.country?),
        Field::CounterpartyCountry => code2(p.counterparty.as_ref()?.country?),
    })
}

impl Filter {
    /// Whether `p` passes.
    pub fn matches(&self, p: &Payment) -> bool {
        match self {
            Filter::Cmp(field, op, value) => field_value(p, *field).is_some_and(|v| match op {
                Op::Eq => v == *value,
                Op::Ne => v != *value,
                Op::Lt => v < *value,
                Op::Le => v <= *value,
                Op::Gt => v > *value,
                Op::Ge => v >= *value,
            }),
            Filter::In(field, values) => field_value(p, *field).is_some_and(|v| values.contains(&v)),
            Filter::Not(f) => !f.matches(p),
            Filter::And(fs) => fs.iter().all(|f| f.matches(p)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(p)),
        }
    }

    /// Parses `text`.
    ///
    /// # Errors
    /// The character of `text` (counting from 1) a mistake is at, and
    /// what it is.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens: &tokens, at: 0, depth: 0, end: text.chars().count() + 1 };
        let f = p.or()?;
        match p.peek() {
            None => Ok(f),
            Some(t) => Err(at(t.pos, format!("unexpected `{}`; expected `and`, `or` or the end", t.text))),
        }
    }
}

type Mistake = (usize, String);

fn at(pos: usize, problem: String) -> Mistake {
    (pos, problem)
}

#[derive(Debug)]
struct Token {
    text: String,
    /// 1-based character position.
    pos: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, Mistake> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let word = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if "(),".contains(c) {
            i += 1;
        } else if "<>!=".contains(c) {
            i += 1;
            if i < chars.len() && chars[i] == '=' {
                i += 1;
            }
        } else if word(c) {
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
        } else {
            return Err(at(i + 1, format!("unexpected character `{c}`")));
        }
        out.push(Token { text: chars[start..i].iter().collect(), pos: start + 1 });
    }
    Ok(out)
}

/// The deepest nesting of `not` and parentheses a filter may have.
const MAX_DEPTH: usize = 32;

struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
    /// `not`s and parentheses open at the token being read.
    depth: usize,
    /// The position just past the text, for "expected … at the end".
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self, expected: &str) -> Result<&Token, Mistake> {
        let end = self.end;
        let t = self.tokens.get(self.at).ok_or_else(|| at(end, format!("expected {expected}, found the end")))?;
        self.at += 1;
        Ok(t)
    }

    fn keyword(&mut self, word: &str) -> bool {
        let hit = self.peek().is_some_and(|t| t.text.eq_ignore_ascii_case(word));
        if hit {
            self.at += 1;
        }
        hit
    }

    fn or(&mut self) -> Result<Filter, Mistake> {
        let mut parts = vec![self.and()?];
        while self.keyword("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Filter::Or(parts) })
    }

    fn and(&mut self) -> Result<Filter, Mistake> {
        let mut parts = vec![self.not()?];
        while self.keyword("and") {
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Filter::And(parts) })
    }

    fn not(&mut self) -> Result<Filter, Mistake> {
        let nests = self.peek().is_some_and(|t| t.text == "(" || t.text.eq_ignore_ascii_case("not"));
        if nests {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                let pos = self.peek().map_or(self.end, |t| t.pos);
                return Err(at(pos, format!("nested deeper than {MAX_DEPTH} `not`s and parentheses")));
            }
        }
        let f = self.not_inner();
        if nests {
            self.depth -= 1;
        }
        f
    }

    fn not_inner(&mut self) -> Result<Filter, Mistake> {
        if self.keyword("not") {
            return Ok(Filter::Not(Box::new(self.not()?)));
        }
        if self.peek().is_some_and(|t| t.text == "(") {
            self.at += 1;
            let f = self.or()?;
            let t = self.next("`)`")?;
            if t.text != ")" {
                return Err(at(t.pos, format!("expected `)`, found `{}`", t.text)));
            }
            return Ok(f);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Filter, Mistake> {
        let t = self.next("a field")?;
        let field = Field::from_name(&t.text).ok_or_else(|| {
            let names: Vec<&str> = Field::ALL.iter().map(|(n, _)| *n).collect();
            at(t.pos, format!("unknown field `{}`; filters compare {}", t.text, names.join(", ")))
        })?;
        let negated = self.keyword("not");
        if self.keyword("in") {
            let open = self.next("`(`")?;
            if open.text != "(" {
                return Err(at(open.pos, format!("expected `(` after `in`, found `{}`", open.text)));
            }
            let mut values = Vec::new();
            loop {
                let v = self.next("a value")?;
                values.push(value(field, v)?);
                let sep = self.next("`,` or `)`")?;
                match sep.text.as_str() {
                    "," => continue,
                    ")" => break,
                    other => return Err(at(sep.pos, format!("expected `,` or `)`, found `{other}`"))),
                }
            }
            let f = Filter::In(field, values);
            return Ok(if negated { Filter::Not(Box::new(f)) } else { f });
        }
        if negated {
            let t = self.peek().map_or(self.end, |t| t.pos);
            return Err(at(t, "expected `in` after `not`".into()));
        }
        let o = self.next("a comparison (=, !=, <, <=, >, >=)")?;
        let op = match o.text.as_str() {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            other => return Err(at(o.pos, format!("expected =, !=, <, <=, >, >= or in, found `{other}`"))),
        };
        if !field.ordered() && !matches!(op, Op::Eq | Op::Ne) {
            return Err(at(o.pos, format!("`{}` takes = , != or in, not `{}`", field.name(), op.as_str())));
        }
        let v = self.next("a value")?;
        Ok(Filter::Cmp(field, op, value(field, v)?))
    }
}

fn value(field: Field, t: &Token) -> Result<Value, Mistake> {
    let s = t.text.as_str();
    let bad = |what: &str| at(t.pos, format!("`{}` compares with {what}, not `{s}`", field.name()));
    match field {
        Field::Amount => s.parse().map(Value::Int).map_err(|_| bad("an integer amount in minor units")),
        Field::Mcc => s.parse::<u16>().map(|v| Value::Int(i64::from(v))).map_err(|_| bad("a 4-digit category code")),
        Field::Kind => Kind::ALL.iter().find(|k| k.as_str() == s).map(|k| Value::Kind(*k)).ok_or_else(|| {
            bad(&format!("one of {}", Kind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")))
        }),
        Field::Channel => Channel::ALL.iter().find(|c| c.as_str() == s).map(|c| Value::Channel(*c)).ok_or_else(|| {
            bad(&format!("one of {}", Channel::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")))
        }),
        Field::Currency => match s.as_bytes() {
            [a, b, c] if s.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Ok(Value::Code([a.to_ascii_uppercase(), b.to_ascii_uppercase(), c.to_ascii_uppercase()]))
            }
            _ => Err(bad("a 3-letter ISO 4217 code")),
        },
        Field::CardPresent => match s {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(bad("true or false")),
        },
        Field::CardCountry | Field::MerchantCountry | Field::GeoCountry | Field::CounterpartyCountry => {
            match s.as_bytes() {
                [a, b] if s.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    Ok(Value::Code([a.to_ascii_uppercase(), b.to_ascii_uppercase(), 0]))
                }
                _ => Err(bad("a 2-letter ISO 3166 country code")),
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Kind(k) => f.write_str(k.as_str()),
            Value::Channel(c) => f.write_str(c.as_str()),
            Value::Code(c) => f.write_str(std::str::from_utf8(&c[..if c[2] == 0 { 2 } else { 3 }]).unwrap_or("?")),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl fmt::Display for Filter {
    /// The canonical text: parses back to the same filter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = |f: &mut fmt::Formatter<'_>, x: &Filter| match x {
            Filter::And(_) | Filter::Or(_) => write!(f, "({x})"),
            _ => write!(f, "{x}"),
        };
        match self {
            Filter::Cmp(field, op, v) => write!(f, "{} {} {v}", field.name(), op.as_str()),
            Filter::In(field, vs) => {
                let vs: Vec<String> = vs.iter().map(ToString::to_string).collect();
                write!(f, "{} in ({})", field.name(), vs.join(", "))
            }
            Filter::Not(x) => {
                f.write_str("not ")?;
                group(f, x)
            }
            Filter::And(xs) | Filter::Or(xs) => {
                let word = if matches!(self, Filter::And(_)) { " and " } else { " or " };
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(word)?;
                    }
                    group(f, x)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Card, Party};
    use vigil_abi::Country;

    fn pay(amount: i64, kind: Kind, channel: Channel) -> Payment {
        Payment {
            id: "f".into(),
            ts_ms: 0,
            channel,
            kind,
            amount,
            currency: *b"EUR",
            account: "a".into(),
            card: Some(Card { token: "t".into(), country: Some(Country(*b"DE")), present: Some(false) }),
            merchant: Some(Party { id: "m".into(), mcc: Some(5967), country: None }),
            counterparty: None,
            device: None,
            ip: None,
            geo: None,
            attrs: Vec::new(),
        }
    }

    #[test]
    fn filters_match_as_written_and_print_back() {
        let p = pay(900, Kind::Transfer, Channel::Alipay);
        for (text, want) in [
            ("amount < 1000", true),
            ("amount >= 1000", false),
            ("kind = transfer", true),
            ("channel in (alipay, wechat)", true),
            ("channel not in (alipay, wechat)", false),
            ("currency = eur and card.present = false", true),
            ("card.country = US or merchant.mcc = 5967", true),
            ("not (amount < 1000 and kind = transfer)", false),
            ("merchant.country = DE", false),
            ("not merchant.country = DE", true),
            ("geo.country != FR", false),
            ("kind = purchase or kind = transfer and amount > 100", true),
        ] {
            let f = Filter::parse(text).expect(text);
            assert_eq!(f.matches(&p), want, "{text}");
            let back = Filter::parse(&f.to_string()).expect("canonical text parses");
            assert_eq!(back, f, "{text} -> {f}");
        }
        // `and` binds tighter than `or`.
        let f = Filter::parse("kind = purchase or kind = transfer and amount > 1000").expect("parse");
        assert!(!f.matches(&p));
    }

    #[test]
    fn mistakes_are_pointed_at() {
        let e = |t: &str| {
            let (pos, e) = Filter::parse(t).expect_err(t);
            format!("{pos}: {e}")
        };
        assert!(e("colour = red").starts_with("1: unknown field `colour`"), "{}", e("colour = red"));
        assert!(e("amount < 1000 and kind = gift").starts_with("26: "), "{}", e("amount < 1000 and kind = gift"));
        assert!(e("kind < transfer").contains("takes = , != or in"));
        assert!(e("amount < ").contains("expected a value, found the end"));
        assert!(e("amount < 10 amount").contains("unexpected `amount`"));
        assert!(e("channel in (card").contains("expected `,` or `)`"));
        assert!(e("amount ~ 3").contains("unexpected character `~`"));
        assert!(e("currency = EURO").contains("3-letter"));
        let deep = format!("{}amount < 1{}", "(".repeat(40), ")".repeat(40));
        assert!(e(&deep).contains("nested deeper than 32"), "{}", e(&deep));
        let nots = format!("{}amount < 1", "not ".repeat(10_000));
        assert!(e(&nots).contains("nested deeper than 32"));
    }
}
