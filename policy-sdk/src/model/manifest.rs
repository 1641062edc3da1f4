//! The manifest a module exports: its units, their kinds and parameters.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// The three kinds of policy unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// Pass or reject each candidate host.
    Filter,
    /// A raw penalty per candidate host.
    Weight,
    /// Migration and power actions for the cluster.
    Balance,
}

impl UnitKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Filter => "filter",
            UnitKind::Weight => "weight",
            UnitKind::Balance => "balance",
        }
    }
}

impl fmt::Display for UnitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ParamValue {
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Floating point.
    Float(f64),
    /// String.
    Str(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The type of a parameter, with its bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Integer within `min..=max`.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// Float within `min..=max`.
    Float {
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// Boolean.
    Bool,
    /// Any string (`string` in JSON, as in text).
    #[serde(rename = "string")]
    Str,
    /// One of a fixed set of strings.
    Choice(Vec<String>),
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamType::Int { min, max } => write!(f, "{} in {min}..={max}", self.word()),
            ParamType::Float { min, max } => write!(f, "{} in {min}..={max}", self.word()),
            ParamType::Bool | ParamType::Str => f.write_str(self.word()),
            ParamType::Choice(options) => write!(f, "{} of {}", self.word(), options.join(", ")),
        }
    }
}

impl ParamType {
    /// The type's one word: `int`, `float`, `bool`, `string` or `choice`, its name in JSON,
    /// so text and `--json` outputs say the same.
    pub fn word(&self) -> &'static str {
        match self {
            ParamType::Int { .. } => "int",
            ParamType::Float { .. } => "float",
            ParamType::Bool => "bool",
            ParamType::Str => "string",
            ParamType::Choice(_) => "choice",
        }
    }

    /// Checks a value against this type, converting integers to floats where a float is
    /// expected. Returns the accepted value or a message saying what was expected.
    pub fn check(&self, value: &ParamValue) -> Result<ParamValue, String> {
        let bad = || format!("expected {self}, got {value}");
        match (self, value) {
            (ParamType::Int { min, max }, ParamValue::Int(v)) if v >= min && v <= max => {
                Ok(value.clone())
            }
            (ParamType::Float { min, max }, ParamValue::Float(v)) if v >= min && v <= max => {
                Ok(value.clone())
            }
            (ParamType::Float { min, max }, ParamValue::Int(v))
                if (*v as f64) >= *min && (*v as f64) <= *max =>
            {
                Ok(ParamValue::Float(*v as f64))
            }
            (ParamType::Bool, ParamValue::Bool(_)) => Ok(value.clone()),
            (ParamType::Str, ParamValue::Str(_)) => Ok(value.clone()),
            (ParamType::Choice(options), ParamValue::Str(s)) if options.iter().any(|o| o == s) => {
                Ok(value.clone())
            }
            _ => Err(bad()),
        }
    }
}

/// Declaration of one unit parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Name, as used in policy files.
    pub name: String,
    /// What it controls.
    pub description: String,
    /// Type and bounds.
    pub ty: ParamType,
    /// Value used when the policy does not set it.
    pub default: ParamValue,
}

impl ParamSpec {
    /// An integer parameter with a default and bounds.
    pub fn int(name: &str, default: i64, min: i64, max: i64, description: &str) -> Self {
        Self::new(
            name,
            ParamType::Int { min, max },
            ParamValue::Int(default),
            description,
        )
    }

    /// A float parameter with a default and bounds.
    pub fn float(name: &str, default: f64, min: f64, max: f64, description: &str) -> Self {
        Self::new(
            name,
            ParamType::Float { min, max },
            ParamValue::Float(default),
            description,
        )
    }

    /// A boolean parameter.
    pub fn bool(name: &str, default: bool, description: &str) -> Self {
        Self::new(
            name,
            ParamType::Bool,
            ParamValue::Bool(default),
            description,
        )
    }

    /// A string parameter.
    pub fn string(name: &str, default: &str, description: &str) -> Self {
        Self::new(
            name,
            ParamType::Str,
            ParamValue::Str(default.to_string()),
            description,
        )
    }

    /// A parameter that takes one of `options`.
    pub fn choice(name: &str, default: &str, options: &[&str], description: &str) -> Self {
        Self::new(
            name,
            ParamType::Choice(options.iter().map(|o| o.to_string()).collect()),
            ParamValue::Str(default.to_string()),
            description,
        )
    }

    fn new(name: &str, ty: ParamType, default: ParamValue, description: &str) -> Self {
        Self {
            name: name.to_string(),
            description: description.to_string(),
            ty,
            default,
        }
    }
}

/// Description of one unit in a module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitDescriptor {
    /// Unique name, as used in policy files (`memory`, `cpu-load`).
    pub name: String,
    /// Kind.
    pub kind: UnitKind,
    /// One-line description.
    pub description: String,
    /// Parameters with types and defaults.
    pub params: Vec<ParamSpec>,
}

/// What a module exports about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The ABI version the module was built against.
    pub abi_version: u32,
    /// Module name.
    pub module: String,
    /// Module version.
    pub version: String,
    /// Units in the order of their unit index.
    pub units: Vec<UnitDescriptor>,
}

impl Manifest {
    /// Checks internal consistency: at least one unit, unique unit names, unique parameter
    /// names, defaults that match their declared types.
    pub fn validate(&self) -> Result<(), String> {
        if self.units.is_empty() {
            return Err("the manifest declares no units".into());
        }
        for (i, unit) in self.units.iter().enumerate() {
            if unit.name.is_empty() || unit.name.len() > 64 {
                return Err(format!("unit #{i}: name must be 1-64 characters"));
            }
            if self.units[..i].iter().any(|u| u.name == unit.name) {
                return Err(format!("unit name {:?} is declared twice", unit.name));
            }
            for (j, p) in unit.params.iter().enumerate() {
                if unit.params[..j].iter().any(|q| q.name == p.name) {
                    return Err(format!(
                        "unit {:?}: parameter {:?} is declared twice",
                        unit.name, p.name
                    ));
                }
                if let Err(e) = p.ty.check(&p.default) {
                    return Err(format!(
                        "unit {:?}: parameter {:?}: default value: {e}",
                        unit.name, p.name
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ParamType;

    /// `wasmsched units` printed `(string)` where its `--json` said `"str"`: the text word of
    /// every parameter type is its JSON name.
    #[test]
    fn param_type_words_are_the_same_in_text_and_json() {
        let cases = [
            (ParamType::Int { min: 0, max: 9 }, "int"),
            (ParamType::Float { min: 0.0, max: 1.0 }, "float"),
            (ParamType::Bool, "bool"),
            (ParamType::Str, "string"),
            (ParamType::Choice(vec!["a".into(), "b".into()]), "choice"),
        ];
        for (ty, word) in cases {
            let json = serde_json::to_value(&ty).unwrap();
            let json_word = match &json {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(map) => map.keys().next().unwrap().clone(),
                other => panic!("{other}"),
            };
            assert_eq!(json_word, word, "{ty:?} in JSON");
            assert_eq!(ty.word(), word, "{ty:?}");
            assert!(ty.to_string().starts_with(word), "{ty:?} in text: {ty}");
        }
    }
}
