package media_test

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// TestCreateUpload_Retried: a CreateUpload retried with its
// client_upload_id, on either instance, returns the upload the first call
// created, neither a second one nor a second share of the unsent bytes'
// quota or of the uploads' rate limit: with an upload URL that works
// while the file has not arrived, with none once it has, and past the
// rate limit. The same id with another request is ALREADY_EXISTS, a
// caller no longer in the chat gets NOT_FOUND, and once the first
// upload's URL expired the id starts a new upload.
func TestCreateUpload_Retried(t *testing.T) {
	limits := servertest.WithConfig(func(c *app.Config) {
		c.Media.MaxUnsentBytes = 10_000
		c.Media.UploadsPerHour = 3
	})
	srvA, srvB := newServer(t, limits), newServer(t, limits)
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			alice, bob, carol := newUser(t, srvA, p), newUser(t, srvA, p), newUser(t, srvA, p)
			aliceB := userOn(srvB, p, alice)
			chatID := privateChat(t, alice, bob)
			createIn := func(u *user, chat, key string, size int) (*parleyv1.CreateUploadResponse, error) {
				t.Helper()
				res, err := u.media.CreateUpload(ctx, req(u, &parleyv1.CreateUploadRequest{
					Target:   &parleyv1.CreateUploadRequest_ChatId{ChatId: chat},
					FileName: "a.txt", ContentType: "text/plain", Size: int64(size), ClientUploadId: key,
				}))
				if err != nil {
					return nil, err
				}
				return res.Msg, nil
			}
			create := func(u *user, key string, size int) (*parleyv1.CreateUploadResponse, error) {
				t.Helper()
				return createIn(u, chatID, key, size)
			}

			first, err := create(alice, "k1", 6000)
			if err != nil {
				t.Fatalf("CreateUpload: %v", err)
			}
			again, err := create(aliceB, "k1", 6000)
			if err != nil {
				t.Fatalf("CreateUpload retried: %v", err)
			}
			id := first.GetMedia().GetId()
			if again.GetMedia().GetId() != id {
				t.Fatalf("retry created upload %s, want the first, %s", again.GetMedia().GetId(), id)
			}
			if again.GetUploadUrl() == "" || again.GetUploadExpiresAt().AsTime().After(first.GetUploadExpiresAt().AsTime()) {
				t.Errorf("retry's upload URL %q expires %v, want one expiring by the first's, %v",
					again.GetUploadUrl(), again.GetUploadExpiresAt().AsTime(), first.GetUploadExpiresAt().AsTime())
			}
			// The retry took no more of the quota: 4000 bytes are left.
			if _, err := create(alice, "", 4000); err != nil {
				t.Fatalf("CreateUpload of what is left: %v", err)
			}
			// The retry's URL takes the file.
			data := bytes.Repeat([]byte("r"), 6000)
			if status, body := alice.put(t, again.GetUploadUrl(), bytes.NewReader(data), int64(len(data))); status != http.StatusOK {
				t.Fatalf("PUT to the retry's URL: %d %s", status, body)
			}
			done, err := create(alice, "k1", 6000)
			if err != nil {
				t.Fatalf("CreateUpload retried after the file arrived: %v", err)
			}
			if done.GetMedia().GetId() != id || done.GetMedia().GetState() != parleyv1.MediaState_MEDIA_STATE_READY || done.GetUploadUrl() != "" {
				t.Errorf("retry after the file arrived: media %s in %v with upload URL %q; want %s ready, no URL",
					done.GetMedia().GetId(), done.GetMedia().GetState(), done.GetUploadUrl(), id)
			}
			if _, err := create(alice, "k1", 6001); connect.CodeOf(err) != connect.CodeAlreadyExists {
				t.Errorf("the id of an upload with another size: %v, want ALREADY_EXISTS", err)
			}

			// Retries take nothing of the rate limit (3 an hour here),
			// and are answered past it.
			kept, err := create(bob, "b1", 10)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if _, err := create(bob, "b1", 10); err != nil {
					t.Fatalf("CreateUpload retried: %v", err)
				}
			}
			for _, key := range []string{"b2", "b3"} {
				if _, err := create(bob, key, 10); err != nil {
					t.Fatalf("CreateUpload within the rate limit, after retries: %v", err)
				}
			}
			_, err = create(bob, "b4", 10)
			servertest.WantRetry(t, err)
			if res, err := create(bob, "b1", 10); err != nil || res.GetMedia().GetId() != kept.GetMedia().GetId() {
				t.Errorf("retry past the rate limit: %v, %v; want %s", res.GetMedia().GetId(), err, kept.GetMedia().GetId())
			}

			// A retry by a member who left the chat since.
			dave := newUser(t, srvA, p)
			grp := servertest.GroupChat(t, carol.chats, carol.token, "g", dave.id).GetId()
			if _, err := createIn(dave, grp, "g1", 10); err != nil {
				t.Fatal(err)
			}
			if _, err := carol.chats.RemoveParticipant(ctx, req(carol, &parleyv1.RemoveParticipantRequest{ChatId: grp, UserId: dave.id})); err != nil {
				t.Fatal(err)
			}
			_, err = createIn(dave, grp, "g1", 10)
			servertest.WantCode(t, err, connect.CodeNotFound)

			// Once the first upload's URL expired (a minute on these
			// servers), its id starts a new upload.
			pending, err := createIn(carol, grp, "c1", 100)
			if err != nil {
				t.Fatal(err)
			}
			srvA.clock.Advance(2 * time.Minute)
			srvB.clock.Advance(2 * time.Minute)
			later, err := createIn(carol, grp, "c1", 100)
			if err != nil || later.GetMedia().GetId() == pending.GetMedia().GetId() || later.GetUploadUrl() == "" {
				t.Errorf("the id of an expired upload: %v, %v; want a new upload", later.GetMedia().GetId(), err)
			}
		})
	}
}
