package user

import (
	"slices"
	"testing"
)

func TestNormalizeUsername(t *testing.T) {
	for _, tc := range []struct {
		in, display, key string
		scripts          []string // refused as mixing these
		form             bool     // refused by PRECIS
	}{
		{in: "alice", display: "alice", key: "alice"},
		{in: "Alice", display: "Alice", key: "alice"},
		{in: "ａlice", display: "alice", key: "alice"},
		{in: "ＡＬＩＣＥ", display: "ALICE", key: "alice"},
		{in: "\u212a", display: "K", key: "k"}, // the Kelvin sign, K by NFC
		{in: "a.b_c-1", display: "a.b_c-1", key: "a.b_c-1"},
		{in: "Борис", display: "Борис", key: "борис"},
		{in: "東京tokyo", display: "東京tokyo", key: "東京tokyo"},
		{in: "ひらがなカタカナ漢字abc", display: "ひらがなカタカナ漢字abc", key: "ひらがなカタカナ漢字abc"},
		{in: "서울seoul", display: "서울seoul", key: "서울seoul"},
		{in: "台北ㄅㄆabc", display: "台北ㄅㄆabc", key: "台北ㄅㄆabc"},
		{in: "e\u0301", display: "\u00e9", key: "\u00e9"}, // combining mark: Inherited, composed by NFC
		{in: "аlice", scripts: []string{"Cyrillic", "Latin"}},
		{in: "αlice", scripts: []string{"Greek", "Latin"}},
		{in: "abc١٢٣", scripts: []string{"Arabic", "Latin"}},
		{in: "서울ひらがな", scripts: []string{"Hangul", "Hiragana"}},
		{in: "ㄅㄆカタ", scripts: []string{"Bopomofo", "Katakana"}},
		{in: "2ème", display: "2ème", key: "2ème"},
		{in: "_José", display: "_José", key: "_josé"},
		{in: "1ａlice", display: "1alice", key: "1alice"},
		{in: "שלום", display: "שלום", key: "שלום"},
		{in: "1שלום", form: true}, // right to left, starting with a digit: the Bidi Rule
		{in: "a b", form: true},
		{in: "", form: true},
	} {
		display, key, err := normalizeUsername(tc.in)
		switch {
		case tc.form:
			if err != errUsernameForm {
				t.Errorf("normalizeUsername(%q) = %q, %q, %v; want errUsernameForm", tc.in, display, key, err)
			}
		case tc.scripts != nil:
			if got := mixedScripts(tc.in); !slices.Equal(got, tc.scripts) || err == nil {
				t.Errorf("normalizeUsername(%q): err %v, mixedScripts %q; want refused as mixing %q", tc.in, err, got, tc.scripts)
			}
		case err != nil || display != tc.display || key != tc.key:
			t.Errorf("normalizeUsername(%q) = %q, %q, %v; want %q, %q", tc.in, display, key, err, tc.display, tc.key)
		}
	}
}
