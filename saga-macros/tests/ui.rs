//! Compile-time behaviour of the macros: what compiles, and the errors users see.

#[test]
fn macros_compile_what_they_should_and_explain_what_they_reject() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
