package push

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	webpush "github.com/SherClockHolmes/webpush-go"
)

// WebPush is the Provider for Web Push (RFC 8030): it encrypts each
// payload for the subscription (RFC 8291, aes128gcm) and signs the
// request with the VAPID key (RFC 8292), through webpush-go.
type WebPush struct {
	public, private string
	subject         string
	client          *http.Client
}

var _ Provider = (*WebPush)(nil)

// NewWebPush returns a Web Push provider that signs with key on behalf of
// subject, a "mailto:" or "https:" URL where the push services can reach
// the operator. client sends the requests; nil means PublicClient().
func NewWebPush(key *ecdsa.PrivateKey, subject string, client *http.Client) (*WebPush, error) {
	if !strings.HasPrefix(subject, "mailto:") && !strings.HasPrefix(subject, "https://") {
		return nil, fmt.Errorf("vapid subject %q: want a mailto: or https: URL", subject)
	}
	public, private, err := vapidKeys(key)
	if err != nil {
		return nil, err
	}
	if client == nil {
		client = PublicClient()
	}
	return &WebPush{public: public, private: private, subject: subject, client: client}, nil
}

// PublicKey returns the VAPID public key, uncompressed and base64url
// without padding: the applicationServerKey of the browsers'
// subscriptions.
func (w *WebPush) PublicKey() string { return w.public }

// Send encrypts payload for the subscription and posts it to its
// endpoint.
func (w *WebPush) Send(ctx context.Context, sub Subscription, payload []byte, opts Options) (Result, error) {
	// webpush-go puts "mailto:" before any subject that is not https.
	subject := strings.TrimPrefix(w.subject, "mailto:")
	resp, err := webpush.SendNotificationWithContext(ctx, payload, &webpush.Subscription{
		Endpoint: sub.Endpoint,
		Keys:     webpush.Keys{P256dh: sub.P256dh, Auth: sub.Auth},
	}, &webpush.Options{
		HTTPClient:      w.client,
		Subscriber:      subject,
		Topic:           opts.Topic,
		TTL:             int(opts.TTL / time.Second),
		Urgency:         webpush.Urgency(opts.Urgency),
		VAPIDPublicKey:  w.public,
		VAPIDPrivateKey: w.private,
	})
	if err != nil {
		// The client's errors (*url.Error, Op "Post") are the network's;
		// the others are webpush-go's, about the keys.
		var ue *url.Error
		switch {
		case errors.Is(err, errNotPublic):
			// Its name leads to the server's own networks: refused,
			// not retried. The subscription stays, as this may be the
			// server's resolver's doing, not the user's (addresses
			// are refused at registration).
			return Result{}, fmt.Errorf("web push: %w", err)
		case ctx.Err() == nil && errors.As(err, &ue) && ue.Op != "parse":
			return Result{Retry: true}, fmt.Errorf("web push: %w", err)
		}
		return Result{}, fmt.Errorf("web push: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	res := Result{Status: resp.StatusCode}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return res, nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		res.Gone = true
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		res.Retry = true
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			res.RetryAfter = time.Duration(s) * time.Second
		}
	}
	return res, fmt.Errorf("web push: %s: %s", resp.Status, strings.TrimSpace(string(body)))
}

// errNotPublic refuses a connection to an address of the server's own
// networks.
var errNotPublic = errors.New("push endpoint: not a public address")

// PublicClient returns the HTTP client for push services: it connects to
// public addresses only, so that an endpoint a user registered cannot
// make the server post to its own network (loopback, private, link-local
// and other special addresses are refused), and gives a push 10 seconds
// (DefaultSendTimeout).
func PublicClient() *http.Client {
	dialer := &net.Dialer{
		Timeout: 10 * time.Second,
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return err
			}
			ip, err := netip.ParseAddr(host)
			if err != nil {
				return err
			}
			if !publicAddr(ip.Unmap()) {
				return fmt.Errorf("%w: %s", errNotPublic, ip)
			}
			return nil
		},
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = nil
	transport.DialContext = dialer.DialContext
	return &http.Client{Timeout: DefaultSendTimeout, Transport: transport}
}

// publicAddr reports whether ip is a global unicast address outside the
// private and special-purpose ranges. An IPv6 address that carries an
// IPv4 one (NAT64, 6to4) is as public as the IPv4 address it carries.
func publicAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsGlobalUnicast() || ip.IsPrivate() || ip.IsLoopback() || ip.IsLinkLocalUnicast() {
		return false
	}
	for _, p := range notPublic {
		if p.Contains(ip) {
			return false
		}
	}
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip): // 64:ff9b::a.b.c.d
			return publicAddr(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(ip): // 2002:aabb:ccdd::/48
			return publicAddr(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	return true
}

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// notPublic are the special-purpose ranges (IANA's registries) that
// IsGlobalUnicast and IsPrivate let through.
var notPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("192.88.99.0/24"),  // 6to4 relays
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and broadcast
	netip.MustParsePrefix("::/96"),           // IPv4-compatible (deprecated)
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("100::/64"),        // discard
	netip.MustParsePrefix("2001::/23"),       // IETF protocol assignments, Teredo (2001::/32) among them
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("3fff::/20"),       // documentation
	netip.MustParsePrefix("5f00::/16"),       // segment routing SIDs
	netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated)
}
