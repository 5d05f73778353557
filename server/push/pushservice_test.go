package push_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parley-chat/parley/server/push"
)

// pushService is an RFC 8030 push service run by the test: it takes
// pushes for its devices, checks their VAPID authorization (RFC 8292)
// against the server's public key, decrypts them with the device's keys
// (RFC 8291) and records them.
type pushService struct {
	t   testing.TB
	srv *httptest.Server
	// vapidKey is the key every push must be signed with (base64url).
	vapidKey string

	mu      sync.Mutex
	devices map[string]*device
}

// received is one push as a device got it.
type received struct {
	Payload push.Payload
	Topic   string
	Urgency string
	TTL     int
}

// device is a browser's subscription: its keys and what it received.
type device struct {
	id       string
	endpoint string
	key      *ecdh.PrivateKey
	secret   []byte
	pushes   chan received

	mu sync.Mutex
	// answers are the statuses of the next requests (then 201).
	answers []int
	// tries counts the requests that came, accepted or not.
	tries int
}

func newPushService(t testing.TB, vapidKey string) *pushService {
	t.Helper()
	ps := &pushService{t: t, vapidKey: vapidKey, devices: map[string]*device{}}
	ps.srv = httptest.NewServer(http.HandlerFunc(ps.serve))
	t.Cleanup(ps.srv.Close)
	return ps
}

// newDevice makes a subscription's keys and endpoint.
func (ps *pushService) newDevice() *device {
	key, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		ps.t.Fatal(err)
	}
	d := &device{key: key, secret: make([]byte, 16), pushes: make(chan received, 100)}
	rand.Read(d.secret)
	ps.mu.Lock()
	d.id = fmt.Sprintf("d%d", len(ps.devices)+1)
	ps.devices[d.id] = d
	ps.mu.Unlock()
	d.endpoint = ps.srv.URL + "/push/" + d.id
	return d
}

func (d *device) p256dh() string {
	return base64.RawURLEncoding.EncodeToString(d.key.PublicKey().Bytes())
}

func (d *device) auth() string { return base64.RawURLEncoding.EncodeToString(d.secret) }

// answer makes the device's next requests answer these statuses.
func (d *device) answer(statuses ...int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.answers = append(d.answers, statuses...)
}

func (d *device) triesSoFar() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tries
}

// next waits for the device's next push.
func (d *device) next(t testing.TB) received {
	t.Helper()
	select {
	case r := <-d.pushes:
		return r
	case <-time.After(15 * time.Second):
		t.Fatalf("device %s: no push came", d.id)
		return received{}
	}
}

// none fails the test if the device has received a push not taken yet.
func (d *device) none(t testing.TB) {
	t.Helper()
	select {
	case r := <-d.pushes:
		t.Fatalf("device %s got a push, want none: %+v", d.id, r.Payload)
	default:
	}
}

func (ps *pushService) serve(w http.ResponseWriter, r *http.Request) {
	id, ok := strings.CutPrefix(r.URL.Path, "/push/")
	ps.mu.Lock()
	d := ps.devices[id]
	ps.mu.Unlock()
	if r.Method != http.MethodPost || !ok || d == nil {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := ps.checkVAPID(r); err != nil {
		ps.t.Errorf("push to %s: VAPID: %v", id, err)
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	if got := r.Header.Get("Content-Encoding"); got != "aes128gcm" {
		ps.t.Errorf("push to %s: Content-Encoding %q, want aes128gcm", id, got)
	}
	ttl, err := strconv.Atoi(r.Header.Get("TTL"))
	if err != nil {
		ps.t.Errorf("push to %s: TTL %q: %v", id, r.Header.Get("TTL"), err)
	}
	plain, err := decrypt(d, body)
	if err != nil {
		ps.t.Errorf("push to %s: decrypt: %v", id, err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	d.mu.Lock()
	d.tries++
	status := http.StatusCreated
	if len(d.answers) > 0 {
		status, d.answers = d.answers[0], d.answers[1:]
	}
	d.mu.Unlock()
	if status != http.StatusCreated {
		http.Error(w, "as the test asked", status)
		return
	}
	var p push.Payload
	if err := json.Unmarshal(plain, &p); err != nil {
		ps.t.Errorf("push to %s: payload %q: %v", id, plain, err)
	}
	d.pushes <- received{Payload: p, Topic: r.Header.Get("Topic"), Urgency: r.Header.Get("Urgency"), TTL: ttl}
	w.Header().Set("Location", ps.srv.URL+"/message/1")
	w.WriteHeader(http.StatusCreated)
}

// checkVAPID checks the request's "vapid t=<JWT>, k=<key>" authorization
// (RFC 8292): k is the server's key, and t is a JWT signed with it
// (ES256) for the endpoint's origin, not expired, naming a contact.
func (ps *pushService) checkVAPID(r *http.Request) error {
	h, ok := strings.CutPrefix(r.Header.Get("Authorization"), "vapid ")
	if !ok {
		return fmt.Errorf("authorization %q: not vapid", r.Header.Get("Authorization"))
	}
	var token, k string
	for _, part := range strings.Split(h, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch name {
		case "t":
			token = value
		case "k":
			k = value
		}
	}
	if k != ps.vapidKey {
		return fmt.Errorf("k = %q, want the server's key %q", k, ps.vapidKey)
	}
	raw, err := base64.RawURLEncoding.DecodeString(k)
	if err != nil {
		return fmt.Errorf("k: %w", err)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		return fmt.Errorf("k: %w", err)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return fmt.Errorf("t: not a JWT")
	}
	var header struct{ Alg, Typ string }
	if err := decodeJSON(parts[0], &header); err != nil || header.Alg != "ES256" {
		return fmt.Errorf("t: header %+v (%v), want alg ES256", header, err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return fmt.Errorf("t: signature of %d bytes (%v), want 64", len(sig), err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return errors.New("t: the signature does not verify with k")
	}
	var claims struct {
		Aud string `json:"aud"`
		Exp int64  `json:"exp"`
		Sub string `json:"sub"`
	}
	if err := decodeJSON(parts[1], &claims); err != nil {
		return fmt.Errorf("t: claims: %w", err)
	}
	if want := "http://" + r.Host; claims.Aud != want {
		return fmt.Errorf("aud = %q, want %q", claims.Aud, want)
	}
	now := time.Now().Unix()
	if claims.Exp <= now || claims.Exp > now+24*3600 {
		return fmt.Errorf("exp = %d, want within 24 hours of %d", claims.Exp, now)
	}
	if !strings.HasPrefix(claims.Sub, "mailto:") && !strings.HasPrefix(claims.Sub, "https:") {
		return fmt.Errorf("sub = %q, want a mailto: or https: URL", claims.Sub)
	}
	return nil
}

func decodeJSON(s string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// decrypt opens an aes128gcm body (RFC 8188) encrypted for the device
// (RFC 8291).
func decrypt(d *device, body []byte) ([]byte, error) {
	// The header: salt (16), record size (4), key id length (1), key id:
	// the application server's one-time public key.
	if len(body) < 21 {
		return nil, errors.New("short body")
	}
	salt, rs, idLen := body[:16], binary.BigEndian.Uint32(body[16:20]), int(body[20])
	if idLen != 65 || len(body) < 21+idLen {
		return nil, fmt.Errorf("key id of %d bytes, want 65", idLen)
	}
	asPublic, ciphertext := body[21:21+idLen], body[21+idLen:]
	if uint32(len(ciphertext)) > rs {
		return nil, fmt.Errorf("a ciphertext of %d bytes in records of %d: want one record", len(ciphertext), rs)
	}
	as, err := ecdh.P256().NewPublicKey(asPublic)
	if err != nil {
		return nil, fmt.Errorf("key id: %w", err)
	}
	shared, err := d.key.ECDH(as)
	if err != nil {
		return nil, err
	}
	// RFC 8291 section 3.4: the input keying material from the shared
	// secret and the auth secret, then RFC 8188's key and nonce.
	info := append(append([]byte("WebPush: info\x00"), d.key.PublicKey().Bytes()...), asPublic...)
	ikm, err := hkdf.Key(sha256.New, shared, d.secret, string(info), 32)
	if err != nil {
		return nil, err
	}
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		return nil, err
	}
	cek, err := hkdf.Expand(sha256.New, prk, "Content-Encoding: aes128gcm\x00", 16)
	if err != nil {
		return nil, err
	}
	nonce, err := hkdf.Expand(sha256.New, prk, "Content-Encoding: nonce\x00", 12)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	plain, err := gcm.Open(nil, nonce, ciphertext, nil)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	// The last record ends with the delimiter 2, then zero padding.
	plain = bytes.TrimRight(plain, "\x00")
	if len(plain) == 0 || plain[len(plain)-1] != 2 {
		return nil, errors.New("no last-record delimiter")
	}
	return plain[:len(plain)-1], nil
}
