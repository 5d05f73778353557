package media

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// signer makes and checks the upload tokens and the signed download
// URLs, with HMAC-SHA256 keys derived from the server's signing key, so
// every instance of a deployment accepts what another signed.
type signer struct {
	upload, download []byte
}

func newSigner(key ed25519.PrivateKey) (signer, error) {
	up, err := hkdf.Key(sha256.New, key.Seed(), nil, "parley media upload token", 32)
	if err != nil {
		return signer{}, fmt.Errorf("media keys: %w", err)
	}
	down, err := hkdf.Key(sha256.New, key.Seed(), nil, "parley media download url", 32)
	if err != nil {
		return signer{}, fmt.Errorf("media keys: %w", err)
	}
	return signer{upload: up, download: down}, nil
}

var b64 = base64.RawURLEncoding

// uploadGrant is what an upload token allows: one upload of exactly Size
// bytes to one media, by one user, until Expires.
type uploadGrant struct {
	MediaID  bson.ObjectID
	Uploader int
	Size     int64
	Expires  time.Time
}

const grantLen = 12 + 4 + 8 + 8

func (s signer) uploadToken(g uploadGrant) string {
	p := make([]byte, 0, grantLen)
	p = append(p, g.MediaID[:]...)
	p = binary.BigEndian.AppendUint32(p, uint32(g.Uploader))
	p = binary.BigEndian.AppendUint64(p, uint64(g.Size))
	p = binary.BigEndian.AppendUint64(p, uint64(g.Expires.Unix()))
	return b64.EncodeToString(p) + "." + b64.EncodeToString(mac(s.upload, p))
}

var errBadToken = errors.New("bad upload token")

// parseUploadToken checks a token's signature and returns its grant; the
// caller checks the rest (expiry, user, media).
func (s signer) parseUploadToken(tok string) (uploadGrant, error) {
	payload, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return uploadGrant{}, errBadToken
	}
	p, err := b64.DecodeString(payload)
	if err != nil || len(p) != grantLen {
		return uploadGrant{}, errBadToken
	}
	got, err := b64.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac(s.upload, p)) {
		return uploadGrant{}, errBadToken
	}
	var g uploadGrant
	copy(g.MediaID[:], p[:12])
	g.Uploader = int(binary.BigEndian.Uint32(p[12:16]))
	g.Size = int64(binary.BigEndian.Uint64(p[16:24]))
	g.Expires = time.Unix(int64(binary.BigEndian.Uint64(p[24:32])), 0)
	return g, nil
}

// signPath returns path (a download path) signed until expires.
func (s signer) signPath(path string, expires time.Time) string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	return path + "?expires=" + exp + "&signature=" + b64.EncodeToString(mac(s.download, []byte(path+"\n"+exp)))
}

// checkSignedPath reports whether expires and signature sign path and
// have not expired at now.
func (s signer) checkSignedPath(path, expires, signature string, now time.Time) bool {
	exp, err := strconv.ParseInt(expires, 10, 64)
	if err != nil || now.Unix() >= exp {
		return false
	}
	got, err := b64.DecodeString(signature)
	return err == nil && hmac.Equal(got, mac(s.download, []byte(path+"\n"+expires)))
}

func mac(key, data []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(data)
	return h.Sum(nil)
}
