//! Test-only helpers: proptest strategies for the wire types, and conversions
//! to and from `amq-protocol`'s types, which serve as the oracle.
//!
//! Strategies produce what both codecs can represent: table keys are unique
//! (amq-protocol stores tables in a `BTreeMap`) and floats are never NaN
//! (its `PartialEq` is IEEE). Duplicates and NaN are covered by field_table.rs.

use amq_protocol::types as o;
use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::field_table::{FieldTable, FieldValue};
use crate::short_str::ShortStr;

pub(crate) fn short_str() -> impl Strategy<Value = ShortStr> {
    prop_oneof!["[a-zA-Z0-9._/-]{0,24}", "\\PC{0,40}", Just("x".repeat(255)),]
        .prop_map(|s: String| ShortStr::try_from_str(&s).unwrap_or_default())
}

pub(crate) fn long_str() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("not NaN", |f| !f.is_nan())
}

fn finite_f64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("not NaN", |f| !f.is_nan())
}

fn leaf_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        finite_f32().prop_map(FieldValue::F32),
        finite_f64().prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        long_str().prop_map(FieldValue::LongStr),
        long_str().prop_map(FieldValue::Bytes),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
    ]
}

fn unique_keys(entries: Vec<(ShortStr, FieldValue)>) -> FieldTable {
    let mut table = FieldTable::new();
    for (k, v) in entries {
        if !table.contains_key(&k) {
            table.insert(k, v);
        }
    }
    table
}

pub(crate) fn field_value() -> impl Strategy<Value = FieldValue> {
    leaf_value().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            vec((short_str(), inner), 0..6).prop_map(|e| FieldValue::Table(unique_keys(e))),
        ]
    })
}

/// Tables holding every field type, nested.
pub(crate) fn field_table() -> impl Strategy<Value = FieldTable> {
    vec((short_str(), field_value()), 0..6).prop_map(unique_keys)
}

pub(crate) fn ss(s: &ShortStr) -> o::ShortString {
    o::ShortString::from(s.as_str())
}

pub(crate) fn ss_from(s: &o::ShortString) -> ShortStr {
    ShortStr::from(s.as_str())
}

pub(crate) fn ls(b: &Bytes) -> o::LongString {
    o::LongString::from(b.to_vec())
}

pub(crate) fn ls_from(l: &o::LongString) -> Bytes {
    Bytes::copy_from_slice(l.as_bytes())
}

pub(crate) fn table_to_oracle(t: &FieldTable) -> o::FieldTable {
    let mut out = o::FieldTable::default();
    for (k, v) in t.iter() {
        out.insert(ss(k), value_to_oracle(v));
    }
    out
}

pub(crate) fn table_from_oracle(t: &o::FieldTable) -> FieldTable {
    t.inner()
        .iter()
        .map(|(k, v)| (ss_from(k), value_from_oracle(v)))
        .collect()
}

pub(crate) fn value_to_oracle(v: &FieldValue) -> o::AMQPValue {
    use o::AMQPValue as A;
    match v {
        FieldValue::Bool(x) => A::Boolean(*x),
        FieldValue::I8(x) => A::ShortShortInt(*x),
        FieldValue::U8(x) => A::ShortShortUInt(*x),
        FieldValue::I16(x) => A::ShortInt(*x),
        FieldValue::U16(x) => A::ShortUInt(*x),
        FieldValue::I32(x) => A::LongInt(*x),
        FieldValue::U32(x) => A::LongUInt(*x),
        FieldValue::I64(x) => A::LongLongInt(*x),
        FieldValue::F32(x) => A::Float(*x),
        FieldValue::F64(x) => A::Double(*x),
        FieldValue::Decimal { scale, value } => A::DecimalValue(o::DecimalValue {
            scale: *scale,
            value: *value,
        }),
        FieldValue::LongStr(b) => A::LongString(ls(b)),
        FieldValue::Bytes(b) => A::ByteArray(o::ByteArray::from(b.to_vec())),
        FieldValue::Array(items) => A::FieldArray(o::FieldArray::from(
            items.iter().map(value_to_oracle).collect::<Vec<_>>(),
        )),
        FieldValue::Timestamp(x) => A::Timestamp(*x),
        FieldValue::Table(t) => A::FieldTable(table_to_oracle(t)),
        FieldValue::Void => A::Void,
    }
}

pub(crate) fn value_from_oracle(v: &o::AMQPValue) -> FieldValue {
    use o::AMQPValue as A;
    match v {
        A::Boolean(x) => FieldValue::Bool(*x),
        A::ShortShortInt(x) => FieldValue::I8(*x),
        A::ShortShortUInt(x) => FieldValue::U8(*x),
        A::ShortInt(x) => FieldValue::I16(*x),
        A::ShortUInt(x) => FieldValue::U16(*x),
        A::LongInt(x) => FieldValue::I32(*x),
        A::LongUInt(x) => FieldValue::U32(*x),
        A::LongLongInt(x) => FieldValue::I64(*x),
        A::Float(x) => FieldValue::F32(*x),
        A::Double(x) => FieldValue::F64(*x),
        A::DecimalValue(d) => FieldValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        A::ShortString(s) => FieldValue::LongStr(Bytes::copy_from_slice(s.as_str().as_bytes())),
        A::LongString(l) => FieldValue::LongStr(ls_from(l)),
        A::FieldArray(a) => FieldValue::Array(a.as_slice().iter().map(value_from_oracle).collect()),
        A::Timestamp(x) => FieldValue::Timestamp(*x),
        A::FieldTable(t) => FieldValue::Table(table_from_oracle(t)),
        A::ByteArray(b) => FieldValue::Bytes(Bytes::copy_from_slice(b.as_slice())),
        A::Void => FieldValue::Void,
    }
}

// ---- allocation counting, for the zero-allocation hot-path tests ----

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct CountingAlloc;

thread_local! {
    // const-initialised and drop-free, so touching it from the allocator is safe.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` and counts the heap allocations it made on this thread.
pub(crate) fn count_allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    let after = ALLOCATIONS.with(Cell::get);
    (out, after - before)
}
