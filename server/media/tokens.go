package media

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/server/keyring"
)

// signer makes and checks the upload tokens and the signed download
// URLs, with HMAC-SHA256 keys derived from the server's signing keys, so
// every instance of a deployment accepts what another signed. Each token
// and URL names the key that signed it, so that they keep working when the
// signing key is rotated and the old one is kept to verify.
type signer struct {
	upload, download *keyring.MACs
}

func newSigner(keys *keyring.Ring) (signer, error) {
	up, err := keys.MACs("parley media upload token")
	if err != nil {
		return signer{}, fmt.Errorf("media keys: %w", err)
	}
	down, err := keys.MACs("parley media download url")
	if err != nil {
		return signer{}, fmt.Errorf("media keys: %w", err)
	}
	return signer{upload: up, download: down}, nil
}

var b64 = base64.RawURLEncoding.Strict()

// uploadGrant is what an upload token allows: one upload of exactly Size
// bytes to one media, by one user, until Expires.
type uploadGrant struct {
	MediaID  bson.ObjectID
	Uploader int
	Size     int64
	Expires  time.Time
}

const grantLen = 12 + 4 + 8 + 8

// uploadToken returns "<key>.<grant>.<mac>"; tokens from before they
// named their key are "<grant>.<mac>".
func (s signer) uploadToken(g uploadGrant) string {
	p := make([]byte, 0, grantLen)
	p = append(p, g.MediaID[:]...)
	p = binary.BigEndian.AppendUint32(p, uint32(g.Uploader))
	p = binary.BigEndian.AppendUint64(p, uint64(g.Size))
	p = binary.BigEndian.AppendUint64(p, uint64(g.Expires.Unix()))
	kid, sig := s.upload.Sign(p)
	return kid + "." + b64.EncodeToString(p) + "." + b64.EncodeToString(sig)
}

var errBadToken = errors.New("bad upload token")

// parseUploadToken checks a token's signature and returns its grant; the
// caller checks the rest (expiry, user, media).
func (s signer) parseUploadToken(tok string) (uploadGrant, error) {
	kid, parts, ok := keyring.SplitToken(tok, 2, 0)
	if !ok {
		return uploadGrant{}, errBadToken
	}
	p, err := b64.DecodeString(parts[0])
	if err != nil || len(p) != grantLen {
		return uploadGrant{}, errBadToken
	}
	got, err := b64.DecodeString(parts[1])
	if err != nil || !s.upload.Verify(kid, p, got) {
		return uploadGrant{}, errBadToken
	}
	var g uploadGrant
	copy(g.MediaID[:], p[:12])
	g.Uploader = int(binary.BigEndian.Uint32(p[12:16]))
	g.Size = int64(binary.BigEndian.Uint64(p[16:24]))
	g.Expires = time.Unix(int64(binary.BigEndian.Uint64(p[24:32])), 0)
	return g, nil
}

// signPath returns path (a download path) signed until expires, by the
// key the URL names.
func (s signer) signPath(path string, expires time.Time) string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	kid, sig := s.download.Sign([]byte(path + "\n" + exp))
	return path + "?expires=" + exp + "&key=" + kid + "&signature=" + b64.EncodeToString(sig)
}

// checkSignedPath reports whether the query q of a signed URL (its
// expires, key and signature) signs path and has not expired at now. URLs
// from before they named their key have no key.
func (s signer) checkSignedPath(path string, q url.Values, now time.Time) bool {
	expires := q.Get("expires")
	exp, err := strconv.ParseInt(expires, 10, 64)
	if err != nil || now.Unix() >= exp || strconv.FormatInt(exp, 10) != expires {
		return false
	}
	kid, sig := q.Get("key"), q.Get("signature")
	if q.Has("key") && kid == "" || !keyring.TokenChars(kid) || !keyring.TokenChars(sig) {
		return false
	}
	got, err := b64.DecodeString(sig)
	return err == nil && s.download.Verify(kid, []byte(path+"\n"+expires), got)
}
