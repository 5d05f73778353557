package live

import (
	"strconv"
	"strings"
	"testing"
)

// formatCursor writes a cursor the way Redis writes a stream entry id,
// which is where every cursor the server hands out comes from.
func formatCursor(c cursorID) string {
	return strconv.FormatUint(c.ms, 10) + "-" + strconv.FormatUint(c.seq, 10)
}

// FuzzParseCursor checks that a resume cursor the parser accepts is two
// decimal numbers around a '-', which Redis writes back as a cursor that
// parses to the same entry id (the very same string, leading zeros
// aside).
func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{
		"1700000000000-0", "1700000000000-17", "0-0", "0-1",
		"18446744073709551615-18446744073709551615", // the largest id
		"18446744073709551616-0",                    // one too large
		"", "-", "1-", "-1", "1", "1-2-3", "+1-0", "1-+0", " 1-0", "1-0 ",
		"01-00", "1_000-0", "0x10-0", "$", "+", "-1-0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := parseCursor(s)
		if !ok {
			return
		}
		a, b, _ := strings.Cut(s, "-")
		if !digits(a) || !digits(b) {
			t.Fatalf("parseCursor(%q) accepted %q and %q; want decimal digits only", s, a, b)
		}
		again := formatCursor(c)
		got, ok := parseCursor(again)
		if !ok || got != c {
			t.Fatalf("parseCursor(%q) = %v; its re-encoding %q parses to %v, %v", s, c, again, got, ok)
		}
		if canonical(a) && canonical(b) && again != s {
			t.Fatalf("parseCursor(%q) = %v, which Redis writes as %q", s, c, again)
		}
	})
}

// canonical reports whether a number has no leading zero.
func canonical(digits string) bool { return digits == "0" || digits[0] != '0' }

func digits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// FuzzSplitPayload checks the framing of pub/sub messages: an event
// logged by appendScript ("<cursor> <event>") or sent by Notify
// (" <event>") splits back into its cursor and event whatever bytes the
// event holds, and any message that splits does so at its first space,
// within the 41 bytes the longest cursor takes.
func FuzzSplitPayload(f *testing.F) {
	f.Add("\x0a\x02hi", uint64(1700000000000), uint64(0))
	f.Add("body with spaces", uint64(18446744073709551615), uint64(18446744073709551615))
	f.Add(sessionEndedPrefix+"AAAAAAAAAAAAAAAAAAAAAA", uint64(0), uint64(0))
	f.Add("", uint64(0), uint64(1))
	f.Add(" ", uint64(1), uint64(0))
	f.Add(strings.Repeat("1", 42)+" x", uint64(1), uint64(1))
	f.Add(strings.Repeat("1", 41)+" x", uint64(1), uint64(1))
	f.Fuzz(func(t *testing.T, msg string, ms, seq uint64) {
		if cursor, body, ok := splitPayload(msg); ok {
			if cursor+" "+body != msg || strings.Contains(cursor, " ") || len(cursor) > 41 {
				t.Fatalf("splitPayload(%q) = %q, %q; want the part before the first space, of at most 41 bytes", msg, cursor, body)
			}
		}
		// msg as an event's bytes, framed as each publisher frames it.
		for _, cursor := range []string{"", formatCursor(cursorID{ms, seq})} {
			framed := cursor + " " + msg
			gotCursor, gotBody, ok := splitPayload(framed)
			if !ok || gotCursor != cursor || gotBody != msg {
				t.Fatalf("splitPayload(%q) = %q, %q, %v; want %q, %q", framed, gotCursor, gotBody, ok, cursor, msg)
			}
		}
	})
}
