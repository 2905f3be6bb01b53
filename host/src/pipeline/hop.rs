//! Repartitioning across daemons: the chain of hops an event takes through
//! a Kafka consumer group when state is kept per more than one key.
//!
//! Within one daemon the exchange gives every key an owner among the
//! workers ([`super::exchange`]). Across the daemons of a group, the input
//! topic's partitions hold all of one key's events only for the key
//! producers partition it by. So an event keyed by several entities visits
//! the owner of each in turn, through one internal topic per key space,
//! `<group-id>-by-<space>` (`-by-account` holds accounts and
//! counterparties), as Kafka Streams repartitions before each keyed
//! aggregation:
//!
//! ```text
//!  payments ─► hop 0: card ─► <group>-by-account ─► hop 1: account ─► <group>-by-device ─► hop 2: device, rules
//!  (by card)   features         (by account)         features           (by device)          decision
//! ```
//!
//! Each hop is the pipeline of one topic, consumed by its own consumer
//! group (`<group-id>-by-<space>`) with its own changelog
//! (`<group-id>-by-<space>-state`): the owner of a key's partition updates
//! and reads that key's features and windows, in the partition's order,
//! exactly as it does for the partition key on the input, and its state
//! follows the partition on a rebalance. It then sends the event on to the
//! next hop's topic, keyed by that hop's key, with every feature value
//! worked out so far. The last hop runs the rules (the rules' keyed state
//! is kept per its key) and writes the decision.
//!
//! A hop commits its input offsets with its state only once the brokers
//! have every event it sent on before that checkpoint (as for any output).
//! After a crash or a rebalance it may send an event again, and the next
//! hop drops what it has already taken: its de-duplication set, which
//! follows its partitions like its state, holds each event it took. So no
//! key's state counts an event twice; a decision may be written twice,
//! with the same values.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::event::{KeyField, Payment, Space};
use crate::sinks::Records;

/// Which hop an input-topic record is at when the input's daemon keeps no
/// state and only sends each event on to the first hop.
pub const ROUTE: u8 = u8::MAX;

/// One hop: the key whose state it keeps, and the topic it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The key.
    pub field: KeyField,
    /// Its topic; `None`: the input topic.
    pub topic: Option<String>,
}

/// The hops of a group whose state is kept per several keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    hops: Vec<Hop>,
    /// The hop the input's records are at ([`ROUTE`] or 0).
    input: u8,
    /// The keys, in order, as the chain's events carry them ([`Chain::keys`]).
    keys: String,
}

/// The name of a space in topic names (`-by-account` for parties).
fn space_name(space: Space) -> &'static str {
    match space {
        Space::Card => "card",
        Space::Party => "account",
        Space::Device => "device",
        Space::Ip => "ip",
        Space::Merchant => "merchant",
    }
}

impl Chain {
    /// The chain for `keys` (`kafka.state-keys`, in order) on an input
    /// partitioned by `partition`, in consumer group `group`; `None` when
    /// state is kept per the partition key alone and needs no hop.
    ///
    /// The first hop runs on the input when its key is the partition key
    /// and no other key in `keys` shares its space (an account's and a
    /// counterparty's state are one party's, so both go through
    /// `-by-account`); otherwise the input's daemon only routes.
    pub fn plan(partition: KeyField, keys: &[KeyField], group: &str) -> Option<Chain> {
        if keys.is_empty() || keys == [partition] {
            return None;
        }
        let shares_space = |k: KeyField| keys.iter().filter(|o| o.space() == k.space()).count() > 1;
        let on_input = keys[0] == partition && !shares_space(partition);
        let hops = keys
            .iter()
            .enumerate()
            .map(|(i, &field)| Hop {
                field,
                topic: (i > 0 || !on_input).then(|| format!("{group}-by-{}", space_name(field.space()))),
            })
            .collect();
        let names: Vec<&str> = keys.iter().map(|k| k.name()).collect();
        Some(Chain { hops, input: if on_input { 0 } else { ROUTE }, keys: names.join(",") })
    }

    /// The chain `config` asks for (`kafka.state-keys`), if any.
    pub fn of(config: &crate::config::Config) -> Option<Chain> {
        let keys = config.state_keys()?;
        let group = config.kafka.as_ref().map_or("vigil", |k| k.group_id.as_str());
        Chain::plan(config.pipeline.partition_key.field(), &keys.keys, group)
    }

    /// The hops, in order.
    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// The hop the input topic's records are at.
    pub fn input_hop(&self) -> u8 {
        self.input
    }

    /// The repartition topics, each once, in hop order.
    pub fn topics(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for t in self.hops.iter().filter_map(|h| h.topic.as_deref()) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// The consumer group reading `topic`.
    pub fn group_of(&self, topic: &str) -> String {
        topic.to_owned()
    }

    /// The changelog of the hops reading `topic`.
    pub fn changelog_of(&self, topic: &str) -> String {
        format!("{topic}-state")
    }

    /// The key field whose state hop `hop` keeps (none for [`ROUTE`]).
    pub fn fields_at(&self, hop: u8) -> &[KeyField] {
        self.hops.get(usize::from(hop)).map_or(&[], |h| std::slice::from_ref(&h.field))
    }

    /// The key fields whose state event `p` updates and reads at hop
    /// `hop`. Usually the hop's own; but where an event has one id for two
    /// hops of one topic (a transfer from an account to itself), both are
    /// done at the first of them, in key order, as one worker does them,
    /// and none at the second.
    pub fn fields_for(&self, hop: u8, p: &Payment) -> SmallVec<[KeyField; 2]> {
        let Some(h) = self.hops.get(usize::from(hop)) else {
            return SmallVec::new();
        };
        let Some(id) = p.key(h.field) else {
            return SmallVec::from_slice(&[h.field]);
        };
        let mut same: SmallVec<[KeyField; 2]> = SmallVec::new();
        for (i, other) in self.hops.iter().enumerate() {
            if other.topic == h.topic && p.key(other.field) == Some(id) {
                if i < usize::from(hop) {
                    return SmallVec::new();
                }
                same.push(other.field);
            }
        }
        same.sort_unstable();
        same
    }

    /// Whether hop `hop` is the last: it runs the rules and decides.
    pub fn is_last(&self, hop: u8) -> bool {
        usize::from(hop) + 1 == self.hops.len()
    }

    /// The hop after `hop`.
    pub fn next(&self, hop: u8) -> Option<u8> {
        let next = if hop == ROUTE { 0 } else { usize::from(hop) + 1 };
        (next < self.hops.len()).then_some(next as u8)
    }
}

/// An event on its way to a hop, as a repartition topic holds it: a JSON
/// line with the encoded event (its card already a token) and the feature
/// values worked out by the hops before.
#[derive(Debug, Serialize, Deserialize)]
struct Wire<'a> {
    /// The keys of the chain that sent it ([`Chain::keys`]): a hop index
    /// means something only in the chain it was written for.
    #[serde(borrow)]
    keys: std::borrow::Cow<'a, str>,
    /// The hop it goes to.
    hop: u8,
    /// When the first hop read it, µs since the epoch: a decision's
    /// latency counts from there.
    read_us: i64,
    /// The event as the rule ABI encodes it, in hex.
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    /// The counterparty's category code, which the encoding leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counterparty_mcc: Option<u16>,
    /// Feature values by feature name, each as its `f64` bits: exact,
    /// where decimal text may come back a bit off.
    #[serde(borrow)]
    values: Vec<(std::borrow::Cow<'a, str>, u64)>,
}

/// An event read from a repartition topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    /// The hop it is at.
    pub hop: u8,
    /// When the first hop read it, µs since the epoch.
    pub read_us: i64,
    /// The event.
    pub payment: Payment,
    /// The feature values the hops before worked out, by name.
    pub values: Vec<(crate::event::Text, f64)>,
}

impl Chain {
    /// The chain's keys, in order, as its events carry them.
    pub fn keys(&self) -> &str {
        &self.keys
    }

    /// Appends `payment`, going to hop `hop`, first read at `read_us`,
    /// with `values`, to `out` under `key`.
    ///
    /// # Errors
    /// When the event cannot be encoded (validation limits make that
    /// unreachable for decoded events).
    #[allow(clippy::too_many_arguments)]
    pub fn write<'v>(
        &self,
        out: &mut Records,
        key: &str,
        hop: u8,
        read_us: i64,
        payment: &Payment,
        values: impl Iterator<Item = (&'v str, f64)>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), vigil_abi::event::EncodeError> {
        scratch.clear();
        payment.encode(scratch)?;
        let wire = Wire {
            keys: self.keys.as_str().into(),
            hop,
            read_us,
            event: hex::encode(&scratch[..]).into(),
            counterparty_mcc: payment.counterparty.as_ref().and_then(|c| c.mcc),
            values: values.map(|(name, v)| (name.into(), v.to_bits())).collect(),
        };
        out.push(Some(key), &wire);
        Ok(())
    }

    /// Reads a record [`Chain::write`] wrote, from `topic`.
    ///
    /// # Errors
    /// A message saying what is wrong with it: not such a record, written
    /// by a chain of other keys (a daemon with another `kafka.state-keys`),
    /// or for a hop that does not read `topic`.
    pub fn read(&self, line: &str, topic: &str) -> Result<Forwarded, String> {
        let wire: Wire<'_> =
            serde_json::from_str(line).map_err(|e| format!("not an event on its way between hops: {e}"))?;
        let keys = &self.keys;
        if wire.keys != *keys {
            return Err(format!(
                "sent on by a daemon keeping state per [{}], but this one keeps it per [{keys}] \
                 (kafka.state-keys): every daemon of a group needs the same keys",
                wire.keys
            ));
        }
        if self.hops.get(usize::from(wire.hop)).and_then(|h| h.topic.as_deref()) != Some(topic) {
            return Err(format!("hop {} is not read from `{topic}`", wire.hop));
        }
        let bytes = hex::decode(wire.event.as_bytes()).map_err(|e| format!("`event` is not hex: {e}"))?;
        let mut payment = Payment::decode(&bytes).ok_or("`event` is not an encoded event")?;
        if let Some(c) = payment.counterparty.as_mut() {
            c.mcc = wire.counterparty_mcc;
        }
        let values = wire.values.into_iter().map(|(name, bits)| (name.as_ref().into(), f64::from_bits(bits))).collect();
        Ok(Forwarded { hop: wire.hop, read_us: wire.read_us, payment, values })
    }
}

/// The de-duplication id of an event at a hop: an event goes through a
/// topic once per hop on it (an account's and its counterparty's).
pub fn dedup_id(id: &str, hop: u8) -> String {
    format!("{id}\u{0}{hop}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoder, Tokenizer};

    fn decoder() -> Decoder {
        Decoder::new(&crate::config::CleanConfig::default(), Tokenizer::new(b"hop-test-key-0123456789abcdef"))
    }

    #[test]
    fn an_event_sent_between_hops_arrives_as_it_left_with_its_values() {
        let d = decoder();
        let chain =
            Chain::plan(KeyField::Card, &[KeyField::Card, KeyField::Device, KeyField::Account], "g").expect("a chain");
        let lines = [
            r#"{"id":"t1","ts":"2024-05-01T12:00:00Z","channel":"card","kind":"purchase","amount":1250,"currency":"usd","account":"a1","card":{"pan":"4111 1111 1111 1111","country":"us","present":false},"merchant":{"id":"m1","mcc":5411,"country":"DE"},"ip":"::ffff:10.0.0.1","device":"d-7","geo":{"country":"de","lat":52.5,"lon":13.4},"attrs":{"3ds":false,"bin":"411111","n":3}}"#,
            r#"{"id":"t2","ts":1717200000000,"channel":"bank_transfer","kind":"transfer","amount":99,"currency":"EUR","account":"a2","counterparty":{"id":"b9","mcc":6012,"country":"FR"}}"#,
        ];
        // A value decimal text may not give back exactly.
        let mean = 0.1 + 0.2 + 1e-17 * 3.0;
        for line in lines {
            let p = d.parse(line).expect("a good event");
            let mut out = Records::default();
            let values = [("count(account, 1h)", 3.0), ("mean(card, amount, 1h)", mean)];
            chain
                .write(&mut out, "a1", 2, 1_717_000_000_000_000, &p, values.into_iter(), &mut Vec::new())
                .expect("encodes");
            let rec = out.last().expect("a record");
            assert_eq!(rec.key, Some(&b"a1"[..]));
            let line = std::str::from_utf8(rec.line).expect("text");
            assert!(!line.contains("4111"), "no PAN between hops: {line}");
            let back = chain.read(line, "g-by-account").expect("reads back");
            assert_eq!((back.hop, back.read_us), (2, 1_717_000_000_000_000));
            assert_eq!(back.payment, p);
            assert_eq!(back.values[0], ("count(account, 1h)".into(), 3.0));
            assert_eq!(back.values[1].1.to_bits(), mean.to_bits(), "bit for bit");
            // Read from a topic its hop does not read, or by a chain of
            // other keys: refused, saying why.
            assert!(chain.read(line, "g-by-device").expect_err("another hop's").contains("hop 2"));
            let other =
                Chain::plan(KeyField::Card, &[KeyField::Card, KeyField::Ip, KeyField::Account], "g").expect("a chain");
            let e = other.read(line, "g-by-account").expect_err("another chain's");
            assert!(e.contains("[card,device,account]") && e.contains("kafka.state-keys"), "{e}");
        }
        let line = |event: &str| {
            format!(r#"{{"keys":"card,device,account","hop":1,"read_us":0,"event":"{event}","values":[]}}"#)
        };
        assert!(chain.read("{}", "g-by-device").is_err());
        assert!(chain.read(&line("zz"), "g-by-device").expect_err("not hex").contains("hex"));
        assert!(chain.read(&line("00"), "g-by-device").expect_err("not an event").contains("encoded event"));
    }

    #[test]
    fn the_input_keeps_its_key_unless_it_shares_a_space() {
        use KeyField::*;
        assert_eq!(Chain::plan(Card, &[Card], "g"), None);
        let c = Chain::plan(Card, &[Card, Account, Device], "g").expect("a chain");
        assert_eq!(c.input_hop(), 0);
        assert_eq!(c.topics(), ["g-by-account", "g-by-device"]);
        assert_eq!(c.fields_at(0), [Card]);
        assert_eq!((c.next(0), c.next(2)), (Some(1), None));
        assert!(c.is_last(2) && !c.is_last(1));
        // An account's inflows and outflows are one party's state: both
        // hops go through one topic, and the input only routes.
        let c = Chain::plan(Account, &[Account, Counterparty], "g").expect("a chain");
        assert_eq!(c.input_hop(), ROUTE);
        assert_eq!(c.topics(), ["g-by-account"]);
        assert_eq!(c.next(ROUTE), Some(0));
        assert_eq!(c.fields_at(ROUTE), [] as [KeyField; 0]);
        // A transfer from an account to itself: both party keys at the
        // first party hop, account first; none at the second.
        let c = Chain::plan(Card, &[Card, Counterparty, Account], "g").expect("a chain");
        let d = crate::decode::Decoder::new(
            &crate::config::CleanConfig::default(),
            crate::decode::Tokenizer::new(b"hop-test-key-0123456789abcdef"),
        );
        let transfer = |to: &str| {
            d.parse(&format!(
                r#"{{"id":"t","ts":1717200000000,"channel":"bank_transfer","kind":"transfer","amount":5,"currency":"EUR","account":"a","counterparty":{{"id":"{to}"}}}}"#
            ))
            .expect("an event")
        };
        let own = transfer("a");
        assert_eq!(c.fields_for(1, &own).as_slice(), [Account, Counterparty]);
        assert!(c.fields_for(2, &own).is_empty());
        let other = transfer("b");
        assert_eq!(c.fields_for(1, &other).as_slice(), [Counterparty]);
        assert_eq!(c.fields_for(2, &other).as_slice(), [Account]);
        assert_eq!(c.fields_for(0, &other).as_slice(), [Card], "no card: no history for it, read as empty");
        // State per another key than the input's first: the input routes.
        let c = Chain::plan(Card, &[Device], "g").expect("a chain");
        assert_eq!((c.input_hop(), c.topics()), (ROUTE, vec!["g-by-device"]));
    }
}
