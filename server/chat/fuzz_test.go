package chat

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// FuzzDecodePage checks ListChats page tokens: what decodePage refuses is
// INVALID_ARGUMENT, and what it accepts is a UTC position that encodePage
// writes back as a token decoding to the same position (the very same
// token, unless the input had bits or line breaks that base64 ignores).
func FuzzDecodePage(f *testing.F) {
	id, _ := bson.ObjectIDFromHex("65f0c0ffee00000000000001")
	for _, p := range []chatPage{
		{UpdatedAt: time.UnixMilli(1_700_000_000_123).UTC(), ID: id},
		{UpdatedAt: time.UnixMilli(0).UTC()},
		{UpdatedAt: time.UnixMilli(-1).UTC(), ID: bson.ObjectID{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
	} {
		f.Add(encodePage(p))
	}
	for _, s := range []string{
		"", "=", "AAAA", "AAAAAAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"AAAAAAAAAAAAAAAAAAAAAAAAAA=", "AAAAAAAAAAAAAAAAAAAAAAAAAA/", "AAAAAAAAAAAAAAAAAAAAAAAAAAB",
		"AAAAAAAAAAAAA\nAAAAAAAAAAAAAA", "////////////////////////////",
	} {
		f.Add(s)
	}
	f.Add(encodePinnedPage(0))
	f.Add(encodePinnedPage(9))
	f.Fuzz(func(t *testing.T, s string) {
		p, offset, pinned, err := decodePage(s)
		if err != nil {
			if code := connect.CodeOf(err); code != connect.CodeInvalidArgument {
				t.Fatalf("decodePage(%q): code %v, want InvalidArgument", s, code)
			}
			return
		}
		if pinned {
			if again := encodePinnedPage(offset); again != s && !strings.ContainsAny(s, "\r\n") {
				if _, err := base64.RawURLEncoding.Strict().DecodeString(s); err == nil {
					t.Fatalf("decodePage(%q) = pinned offset %d, which encodes as %q", s, offset, again)
				}
			}
			return
		}
		if p.UpdatedAt.Location() != time.UTC {
			t.Fatalf("decodePage(%q): time in %v, want UTC", s, p.UpdatedAt.Location())
		}
		again := encodePage(p)
		got, _, _, err := decodePage(again)
		if err != nil || !got.UpdatedAt.Equal(p.UpdatedAt) || got.ID != p.ID {
			t.Fatalf("decodePage(%q) = %v; its re-encoding %q decodes to %v, %v", s, p, again, got, err)
		}
		if _, err := base64.RawURLEncoding.Strict().DecodeString(s); err == nil && !strings.ContainsAny(s, "\r\n") && again != s {
			t.Fatalf("decodePage(%q) = %v, which encodes as %q", s, p, again)
		}
	})
}

// FuzzParseChatID checks chat ids: what parseChatID refuses is
// INVALID_ARGUMENT, and what it accepts is the hex of an ObjectID, in any
// case, that parses again from its Hex form.
func FuzzParseChatID(f *testing.F) {
	for _, s := range []string{
		bson.NewObjectID().Hex(), "65f0c0ffee00000000000001", "65F0C0FFEE00000000000001", "000000000000000000000000",
		"", "65f0c0ffee0000000000000", "65f0c0ffee000000000000011", "65f0c0ffee00000000000g01", " 65f0c0ffee0000000000001",
		"ObjectId(\"65f0c0ffee00000000000001\")",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := parseChatID(s)
		if err != nil {
			if code := connect.CodeOf(err); code != connect.CodeInvalidArgument {
				t.Fatalf("parseChatID(%q): code %v, want InvalidArgument", s, code)
			}
			return
		}
		if !strings.EqualFold(id.Hex(), s) {
			t.Fatalf("parseChatID(%q) = %v, whose hex is %q", s, id, id.Hex())
		}
		if got, err := parseChatID(id.Hex()); err != nil || got != id {
			t.Fatalf("parseChatID(%q) = %v; its Hex %q parses to %v, %v", s, id, id.Hex(), got, err)
		}
	})
}
