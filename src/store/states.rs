//! The states the store keeps as text, decoded once at its edge: a value the gateway
//! did not write is a [`StoreError::Corrupt`] there, not a string compared elsewhere.

use super::StoreError;

/// Stores a type with `as_str` and `FromStr` as a text column on either engine: rows
/// decode into it and statements bind it, so no caller handles the word itself.
macro_rules! text_column {
    ($name:ty) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $name
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $name
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let word = <&'r str as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(word.parse::<$name>()?)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $name
        where
            for<'a> &'a str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut DB::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }
    };
}

text_column!(crate::domain::Milestone);

/// Declares a closed set of stored words: `as_str`, `FromStr` (an unknown word is
/// corrupt data), a text column ([`text_column`]), `Display` and `Serialize`.
macro_rules! stored_words {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err(StoreError::Corrupt(format!(concat!($what, " `{}`"), other))),
                }
            }
        }

        text_column!($name);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

stored_words! {
    /// Referral lifecycle as stored.
    ReferralStatus, "referral status" {
        Active => "active",
        Cancelled => "cancelled",
        ConsentWithdrawn => "consent-withdrawn",
    }
}

stored_words! {
    /// What a delivery carries, and so to whom: the first three go to the referral's
    /// provider, a `milestone` to the referring GP system's callback.
    DeliveryKind, "delivery kind" {
        Referral => "referral",
        Cancellation => "cancellation",
        Withdrawal => "withdrawal",
        Milestone => "milestone",
    }
}

stored_words! {
    /// Where a delivery stands in the outbox.
    DeliveryState, "delivery state" {
        Queued => "queued",
        Delivered => "delivered",
        Dead => "dead",
        Cancelled => "cancelled",
    }
}

/// A referral's gateway id, named by its deliveries, status events and audit records.
/// [`ReferralId::generate`] makes a new one (a UUID). Read back, it is taken as stored,
/// so a row pointing at a lost referral can still be shown to operators and parked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReferralId(String);

impl ReferralId {
    /// A fresh id for a referral being accepted.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ReferralId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(StoreError::Corrupt("an empty referral id".into()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl std::ops::Deref for ReferralId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ReferralId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for ReferralId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl PartialEq<String> for ReferralId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

text_column!(ReferralId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_and_strangers_are_corrupt() {
        for k in DeliveryKind::ALL {
            assert_eq!(k.as_str().parse::<DeliveryKind>().ok(), Some(*k));
        }
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>().ok(), Some(*s));
        }
        for s in ReferralStatus::ALL {
            assert_eq!(s.as_str().parse::<ReferralStatus>().ok(), Some(*s));
        }
        let err = "parked".parse::<DeliveryState>().map(|_| ()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(ref m) if m == "delivery state `parked`"));
    }
}
