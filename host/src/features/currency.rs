//! Money across currencies: `[currencies]` names a base currency and the
//! rate of each other currency to it, and a feature over `base_amount`
//! (`sum(account, base_amount, 24h)`) adds each payment converted to minor
//! units of the base. A feature over `amount` adds minor units as they come,
//! so a rule knows which it reads by the name it declares.

use std::collections::HashMap;

use crate::config::{ConfigError, CurrencyConfig};

/// The conversion table.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    base: [u8; 3],
    /// By currency: the factor from its minor units to the base's.
    factor: HashMap<[u8; 3], f64>,
}

fn code(text: &str, key: &str) -> Result<([u8; 3], u16), ConfigError> {
    let currency = iso_currency::Currency::from_code(text)
        .ok_or_else(|| ConfigError::invalid(key, format!("`{text}` is not an ISO 4217 currency code")))?;
    let bytes: [u8; 3] = text.as_bytes().try_into().map_err(|_| ConfigError::invalid(key, "must be 3 letters"))?;
    Ok((bytes, currency.exponent().unwrap_or(0)))
}

impl Rates {
    /// The table `[currencies]` describes.
    ///
    /// # Errors
    /// The key of a code that is not a currency, or of a rate that is not
    /// a positive number.
    pub fn from_config(c: &CurrencyConfig) -> Result<Self, ConfigError> {
        let (base, base_exp) = code(&c.base, "currencies.base")?;
        let mut factor = HashMap::new();
        factor.insert(base, 1.0);
        for (name, &rate) in &c.rates {
            let key = format!("currencies.rates.{name}");
            let (cur, exp) = code(name, &key)?;
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::invalid(key, "must be a positive number: units of the base per unit"));
            }
            // Minor units of `cur` → units → base units → base minor units.
            let f = rate * 10f64.powi(i32::from(base_exp) - i32::from(exp));
            if cur != base {
                factor.insert(cur, f);
            }
        }
        Ok(Self { base, factor })
    }

    /// `amount` minor units of `currency` in minor units of the base,
    /// rounded; `None` for a currency with no rate.
    pub fn to_base(&self, amount: i64, currency: [u8; 3]) -> Option<i64> {
        let f = *self.factor.get(&currency)?;
        Some((amount as f64 * f).round() as i64)
    }

    /// The base currency's code.
    pub fn base(&self) -> &str {
        std::str::from_utf8(&self.base).unwrap_or("?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_convert_through_each_currencys_minor_units() {
        let c = CurrencyConfig {
            base: "USD".into(),
            rates: [("EUR".to_owned(), 1.08), ("JPY".to_owned(), 0.0067), ("BHD".to_owned(), 2.65)].into(),
        };
        let r = Rates::from_config(&c).expect("rates");
        assert_eq!(r.to_base(10_000, *b"USD"), Some(10_000));
        assert_eq!(r.to_base(10_000, *b"EUR"), Some(10_800), "100.00 EUR is 108.00 USD");
        assert_eq!(r.to_base(10_000, *b"JPY"), Some(6_700), "10,000 yen (no minor unit) is 67.00 USD");
        assert_eq!(r.to_base(1_000, *b"BHD"), Some(265), "1.000 BHD (three decimals) is 2.65 USD");
        assert_eq!(r.to_base(10_000, *b"GBP"), None, "no rate");
        let bad = |base: &str, name: &str, rate: f64| {
            let c = CurrencyConfig { base: base.into(), rates: [(name.to_owned(), rate)].into() };
            Rates::from_config(&c).expect_err("refused").to_string()
        };
        assert!(bad("XXY", "EUR", 1.0).contains("currencies.base"));
        assert!(bad("USD", "EURO", 1.0).contains("currencies.rates.EURO"));
        assert!(bad("USD", "EUR", 0.0).contains("positive"));
        assert!(bad("USD", "EUR", f64::NAN).contains("positive"));
    }
}
