package docket

import "unicode/utf8"

// validName checks task names, queue names, ids and header keys:
// [A-Za-z0-9][A-Za-z0-9._:-]{0,127}. Names become SQL values, Redis keys,
// AMQP queue names and log labels, so they are kept plain.
func validName(field, s string) error {
	if s == "" {
		return invalid(field, s, "must not be empty")
	}
	if len(s) > 128 {
		return invalid(field, s, "longer than 128 bytes")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if alnum || i > 0 && (c == '.' || c == '_' || c == ':' || c == '-') {
			continue
		}
		return invalid(field, s, "must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
	}
	return nil
}

// validKey checks free-form keys: non-empty valid UTF-8 without NUL.
func validKey(field, s string, max int) error {
	switch {
	case s == "":
		return invalid(field, s, "must not be empty")
	case len(s) > max:
		return invalid(field, s, "too long")
	case !utf8.ValidString(s):
		return invalid(field, s, "must be valid UTF-8")
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return invalid(field, s, "must not contain NUL")
		}
	}
	return nil
}
