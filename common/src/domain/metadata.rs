//! The limits on a message's metadata: depth, keys, items and string lengths.

use serde_json::{Map, Value};

use super::{FieldError, METADATA_DEPTH_MAX, METADATA_KEYS_MAX, METADATA_STRING_MAX};

/// The limits on a message's metadata, applied to a metadata filter and a conversation's
/// metadata too.
pub fn check_metadata(map: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    check_metadata_object(map, "metadata", 1, errors);
}

fn check_metadata_object(map: &Map<String, Value>, path: &str, depth: usize, errors: &mut Vec<FieldError>) {
    if map.len() > METADATA_KEYS_MAX {
        errors.push(FieldError::new(
            path,
            "too_many_keys",
            format!("an object may have at most {METADATA_KEYS_MAX} keys, got {}", map.len()),
        ));
    }
    for (key, value) in map {
        if key.contains('\0') {
            // Postgres stores no JSON with NUL characters; the key cannot be quoted in a path either.
            errors.push(FieldError::new(path, "invalid_characters", "keys must not contain NUL characters"));
            continue;
        }
        let child = format!("{path}.{key}");
        if key.chars().count() > METADATA_STRING_MAX {
            errors.push(FieldError::new(
                &child,
                "key_too_long",
                format!("keys must be at most {METADATA_STRING_MAX} characters"),
            ));
        }
        check_metadata_value(value, &child, depth, errors);
    }
}

fn check_metadata_value(value: &Value, path: &str, depth: usize, errors: &mut Vec<FieldError>) {
    match value {
        Value::Object(_) | Value::Array(_) if depth >= METADATA_DEPTH_MAX => {
            errors.push(FieldError::new(
                path,
                "too_deep",
                format!("metadata may nest at most {METADATA_DEPTH_MAX} levels"),
            ));
        }
        Value::Object(map) => check_metadata_object(map, path, depth + 1, errors),
        Value::Array(items) => {
            if items.len() > METADATA_KEYS_MAX {
                errors.push(FieldError::new(
                    path,
                    "too_many_items",
                    format!("an array may have at most {METADATA_KEYS_MAX} items, got {}", items.len()),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                check_metadata_value(item, &format!("{path}[{i}]"), depth + 1, errors);
            }
        }
        // Postgres stores neither text nor JSON with NUL characters.
        Value::String(s) if s.contains('\0') => {
            errors.push(FieldError::new(path, "invalid_characters", "strings must not contain NUL characters"));
        }
        Value::String(s) if s.chars().count() > METADATA_STRING_MAX => {
            errors.push(FieldError::new(
                path,
                "too_long",
                format!("strings must be at most {METADATA_STRING_MAX} characters, got {}", s.chars().count()),
            ));
        }
        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => {}
    }
}
