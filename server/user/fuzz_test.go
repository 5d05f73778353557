package user

import (
	"encoding/base64"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"connectrpc.com/connect"
	"golang.org/x/text/unicode/norm"

	"github.com/parley-chat/parley/ent/schema"
	"github.com/parley-chat/parley/ent/user"
)

// FuzzDecodeCursor checks SearchUsers page tokens: what decodeCursor
// refuses is INVALID_ARGUMENT; what it accepts has a positive id and a key
// that PostgreSQL takes as a query argument (valid UTF-8 without NUL), and
// encodeCursor writes it back as a token decoding to the same cursor.
func FuzzDecodeCursor(f *testing.F) {
	for _, c := range []searchCursor{
		{Key: "alice", ID: 1},
		{Key: "", ID: 9_223_372_036_854_775_807},
		{Key: "東京tokyo#7", ID: 42},
		{Key: `"<&>\`, ID: 3},
	} {
		f.Add(encodeCursor(c))
	}
	for _, json := range []string{
		`{"u":"a","i":0}`, `{"u":"a","i":-1}`, `{"u":"a\u0000","i":1}`, `{"u":"\xff","i":1}`,
		`{"U":"a","I":1}`, `{"u":"a","i":1.5}`, `{"u":"a","i":1e3}`, `{"u":1,"i":1}`, `{"i":1}`,
		`{"u":"a","i":1}x`, `null`, `[]`, `{"u":"a","i":99999999999999999999}`,
	} {
		f.Add(base64.RawURLEncoding.EncodeToString([]byte(json)))
	}
	f.Add("")
	f.Add("e30")  // {}
	f.Add("e30=") // padded
	f.Add("not base64!")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeCursor(s)
		if err != nil {
			if code := connect.CodeOf(err); code != connect.CodeInvalidArgument {
				t.Fatalf("decodeCursor(%q): code %v, want InvalidArgument", s, code)
			}
			return
		}
		if c.ID <= 0 || !utf8.ValidString(c.Key) || strings.ContainsRune(c.Key, 0) {
			t.Fatalf("decodeCursor(%q) = %+v; want a positive id and a valid UTF-8 key without NUL", s, c)
		}
		again := encodeCursor(c)
		if got, err := decodeCursor(again); err != nil || got != c {
			t.Fatalf("decodeCursor(%q) = %+v; its re-encoding %q decodes to %+v, %v", s, c, again, got, err)
		}
	})
}

// requestPattern is the pattern RegisterRequest.username and
// UpdateProfileRequest.username are validated against, with a length of
// at most schema.UsernameMaxLen, before normalizeUsername sees them.
var requestPattern = regexp.MustCompile(`^[\p{L}\p{M}\p{N}._-]+$`)

// FuzzNormalizeUsername checks the promises of username.go: usernameKey
// is idempotent on any string; a name that normalizeUsername accepts has
// a display form in NFC, which the users.username column takes and which
// is accepted again as itself with the same key (normalising is
// idempotent); the key is what usernameKey gives for the name, its
// display form and the key itself, so the account signs in under any of
// them; and a name the request rules let through never has the '#' that
// collisionMark relies on no name having.
func FuzzNormalizeUsername(f *testing.F) {
	for _, s := range []string{
		"alice", "Alice", "ａlice", "ＡＬＩＣＥ", "\u212a", "a.b_c-1", "Борис", "東京tokyo", "서울seoul",
		"台北ㄅㄆabc", "e\u0301", "аlice", "abc١٢٣", "2ème", "_José", "שלום", "1שלום", "a b", "", "a#b",
		"İstanbul", "ß", "ﬁ", "Ⅻ", "\u0345", "\ufb2c", "ǅ", "\xff", "a\x00b", "\u200d", "\u0130\u0307",
		strings.Repeat("a", 50), strings.Repeat("a", 51),
		strings.Repeat("\u0958", 26), // क़, two characters in NFC
		strings.Repeat("\ufb2c", 17), // שּׁ, three
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		// usernameKey takes any string: an old account's name, a login, a
		// search prefix.
		fallback := usernameKey(name)
		if again := usernameKey(fallback); again != fallback {
			t.Fatalf("usernameKey(%q) = %q, but usernameKey(%q) = %q", name, fallback, fallback, again)
		}
		display, key, err := normalizeUsername(name)
		if err != nil {
			if code := connect.CodeOf(err); code != connect.CodeInvalidArgument {
				t.Fatalf("normalizeUsername(%q): code %v, want InvalidArgument", name, code)
			}
			return
		}
		if display == "" || key == "" || !norm.NFC.IsNormalString(display) {
			t.Fatalf("normalizeUsername(%q) = %q, %q; want a non-empty display form in NFC and a key", name, display, key)
		}
		if err := user.UsernameValidator(display); err != nil {
			t.Fatalf("normalizeUsername(%q) = %q, which the username column refuses: %v", name, display, err)
		}
		d2, k2, err := normalizeUsername(display)
		if err != nil || d2 != display || k2 != key {
			t.Fatalf("normalizeUsername(%q) = %q, %q, but normalizeUsername(%q) = %q, %q, %v", name, display, key, display, d2, k2, err)
		}
		for _, login := range []string{name, display, key} {
			if got := usernameKey(login); got != key {
				t.Fatalf("normalizeUsername(%q) has key %q, but usernameKey(%q) = %q", name, key, login, got)
			}
		}
		request := requestPattern.MatchString(name) && utf8.RuneCountInString(name) <= schema.UsernameMaxLen
		if request && strings.Contains(display+key, collisionMark) {
			t.Fatalf("normalizeUsername(%q) = %q, %q, with the collision mark %q", name, display, key, collisionMark)
		}
	})
}
