package push

import (
	"context"
	"time"
)

// Subscription is one device's registration with a push service, as a
// Provider needs it.
type Subscription struct {
	// Endpoint is the push service's URL for the device.
	Endpoint string
	// P256dh and Auth are the device's keys (RFC 8291), base64url.
	P256dh, Auth string
}

// Options are the delivery hints of one push (RFC 8030 section 5).
type Options struct {
	// TTL is how long the push service keeps the push for an
	// unreachable device.
	TTL time.Duration
	// Urgency is "very-low", "low", "normal" or "high".
	Urgency string
	// Topic replaces a push of the same topic still waiting at the push
	// service: at most 32 characters of the base64url alphabet.
	Topic string
}

// Result is what became of one push.
type Result struct {
	// Gone says that the push service no longer knows the subscription
	// (404, 410): it is to be removed.
	Gone bool
	// Retry says that the push may succeed later (429, 5xx, a network
	// error); RetryAfter, when set, is how long the push service asked to
	// wait.
	Retry      bool
	RetryAfter time.Duration
	// Status is the push service's HTTP status, 0 when none came.
	Status int
}

// Provider delivers pushes through one kind of push service: Web Push
// (WebPush); FCM or APNs could be others. Send's error says why a push
// was not accepted; its Result says what to do about it.
type Provider interface {
	Send(ctx context.Context, sub Subscription, payload []byte, opts Options) (Result, error)
}
