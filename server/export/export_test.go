package export_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/export"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// deployment is the shared part of a deployment's instances: their own
// MongoDB database, a media directory and a clock.
type deployment struct {
	db    servertest.Option
	dir   string
	clock *servertest.Clock
}

func newDeployment(t *testing.T) *deployment {
	return &deployment{db: servertest.WithOwnMongoDatabase(t), dir: t.TempDir(), clock: servertest.NewClock()}
}

// instance starts an instance of d whose worker looks for work every
// poll.
func (d *deployment) instance(t *testing.T, poll time.Duration) *servertest.Server {
	t.Helper()
	return servertest.New(t, d.db, servertest.WithConfig(func(c *app.Config) {
		c.MediaDir = d.dir
		c.Now = d.clock.Now
		c.Export.PollInterval = poll
		c.Export.TempDir = t.TempDir()
	}))
}

// pair starts two instances of one deployment: api, whose worker looks
// for work only at start-up (so that what the test requests stays
// pending until the other one takes it), and worker, whose worker looks
// every few milliseconds.
func pair(t *testing.T) (d *deployment, api, worker *servertest.Server) {
	t.Helper()
	d = newDeployment(t)
	return d, d.instance(t, time.Hour), d.instance(t, 20*time.Millisecond)
}

// waitState polls GetExport until the export is in state want, and fails
// the test if it fails instead or takes more than 30 s.
func waitState(t *testing.T, c parleyv1connect.ExportServiceClient, token, id string, want parleyv1.ExportState) *parleyv1.Export {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := c.GetExport(context.Background(), servertest.WithToken(&parleyv1.GetExportRequest{ExportId: id}, token))
		if err != nil {
			t.Fatalf("GetExport: %v", err)
		}
		e := res.Msg.GetExport()
		if e.GetState() == want {
			return e
		}
		if e.GetState() == parleyv1.ExportState_EXPORT_STATE_FAILED || time.Now().After(deadline) {
			t.Fatalf("export %s is %v, want %v", id, e.GetState(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func get(t *testing.T, s *servertest.Server, path string) *http.Response {
	t.Helper()
	res, err := http.Get(s.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res
}

func unzip(t *testing.T, body []byte) map[string][]byte {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatalf("the download is no zip: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range zr.File {
		r, err := f.Open()
		if err != nil {
			t.Fatalf("open %s: %v", f.Name, err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatalf("read %s: %v", f.Name, err)
		}
		out[f.Name] = b
	}
	return out
}

func decode(t *testing.T, files map[string][]byte, name string, v any) {
	t.Helper()
	b, ok := files[name]
	if !ok {
		t.Fatalf("the zip has no %s; it has %v", name, keys(files))
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, b)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

type exportedMessage struct {
	ID          string `json:"id"`
	SenderID    int32  `json:"senderId"`
	Text        string `json:"text"`
	Attachments []struct {
		MediaID string `json:"mediaId"`
	} `json:"attachments"`
}

func TestExportService_Export(t *testing.T) {
	d, api, _ := pair(t)
	clock := d.clock
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(api, p)
			exp := servertest.Client(api, p, parleyv1connect.NewExportServiceClient)
			ctx := context.Background()
			alice := servertest.Register(t, c.Auth, servertest.UniqueName("alice"))
			bob := servertest.Register(t, c.Auth, servertest.UniqueName("bob"))

			// Alice's profile: an avatar she uploaded.
			avatarPNG := servertest.PNG(t, 64, 64)
			avatarMedia := servertest.UploadAvatar(t, api, c.Media, alice.Token, "me.png", "image/png", avatarPNG)
			av, err := c.Avatar.AddAvatar(ctx, servertest.WithToken(&parleyv1.AddAvatarRequest{MediaId: avatarMedia.GetId()}, alice.Token))
			if err != nil {
				t.Fatalf("AddAvatar: %v", err)
			}
			// A group and a private chat, with messages of both and a
			// file from each.
			group := servertest.GroupChat(t, c.Chat, alice.Token, "export group", bob.ID)
			private := servertest.PrivateChat(t, c.Chat, alice.Token, bob.ID)
			var sent []*parleyv1.Message
			sent = append(sent,
				servertest.Send(t, c.Message, alice.Token, group.GetId(), "hello group from alice"),
				servertest.Send(t, c.Message, bob.Token, group.GetId(), "hi alice, bob here"),
				servertest.Send(t, c.Message, alice.Token, private.GetId(), "a private word"),
				servertest.Send(t, c.Message, bob.Token, private.GetId(), "and a private answer"),
			)
			aliceFile := []byte("alice's notes\x00\x01\x02 with binary bytes")
			aliceMedia := servertest.Upload(t, api, c.Media, alice.Token, group.GetId(), "notes.bin", "application/octet-stream", aliceFile)
			bobMedia := servertest.Upload(t, api, c.Media, bob.Token, group.GetId(), "bob.txt", "text/plain", []byte("bob's file"))
			for _, s := range []struct {
				token, media, text string
			}{{alice.Token, aliceMedia.GetId(), "my notes"}, {bob.Token, bobMedia.GetId(), "bob's file"}} {
				res, err := c.Message.SendMessage(ctx, servertest.WithToken(&parleyv1.SendMessageRequest{
					ChatId: group.GetId(), ClientMessageId: servertest.UniqueName("file"), Text: s.text, MediaIds: []string{s.media},
				}, s.token))
				if err != nil {
					t.Fatalf("SendMessage with a file: %v", err)
				}
				sent = append(sent, res.Msg.GetMessage())
			}

			res, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, alice.Token))
			if err != nil {
				t.Fatalf("RequestExport: %v", err)
			}
			first := res.Msg.GetExport()
			if !res.Msg.GetCreated() || first.GetId() == "" {
				t.Fatalf("RequestExport = %v, want a new export", res.Msg)
			}

			t.Run("RequestAgainWhileRunning", func(t *testing.T) {
				res, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, alice.Token))
				if err != nil {
					t.Fatalf("RequestExport: %v", err)
				}
				st := res.Msg.GetExport().GetState()
				if res.Msg.GetCreated() || res.Msg.GetExport().GetId() != first.GetId() ||
					(st != parleyv1.ExportState_EXPORT_STATE_PENDING && st != parleyv1.ExportState_EXPORT_STATE_RUNNING) {
					// (The other instance may have finished it meanwhile.)
					if st != parleyv1.ExportState_EXPORT_STATE_READY {
						t.Fatalf("RequestExport again = %v, want export %s, not created", res.Msg, first.GetId())
					}
				}
			})

			ready := waitState(t, exp, alice.Token, first.GetId(), parleyv1.ExportState_EXPORT_STATE_READY)
			if ready.GetDownloadUrl() == "" || ready.GetSize() <= 0 || ready.GetFinishedAt() == nil {
				t.Fatalf("ready export = %v, want a download URL, a size and a finish time", ready)
			}
			if got, want := ready.GetExpiresAt().AsTime().Sub(ready.GetFinishedAt().AsTime()), 24*time.Hour; got != want {
				t.Errorf("expires %s after it finished, want %s", got, want)
			}

			dl := get(t, api, ready.GetDownloadUrl())
			body, err := io.ReadAll(dl.Body)
			if err != nil {
				t.Fatal(err)
			}
			if dl.StatusCode != http.StatusOK {
				t.Fatalf("GET download_url: %d %s", dl.StatusCode, body)
			}
			if got := dl.Header.Get("Content-Type"); got != "application/zip" {
				t.Errorf("Content-Type = %q, want application/zip", got)
			}
			if int64(len(body)) != ready.GetSize() {
				t.Errorf("downloaded %d bytes, want the export's size %d", len(body), ready.GetSize())
			}
			files := unzip(t, body)

			t.Run("Profile", func(t *testing.T) {
				var profile struct {
					Me struct {
						User struct {
							ID       int32  `json:"id"`
							Username string `json:"username"`
						} `json:"user"`
						Email string `json:"email"`
					} `json:"me"`
					Avatars []struct {
						ID  int32  `json:"id"`
						URL string `json:"url"`
					} `json:"avatars"`
				}
				decode(t, files, "profile.json", &profile)
				if profile.Me.User.ID != alice.ID || profile.Me.User.Username != alice.Username || profile.Me.Email != alice.Email {
					t.Errorf("profile.json me = %+v, want alice (%d %s %s)", profile.Me, alice.ID, alice.Username, alice.Email)
				}
				found := false
				for _, a := range profile.Avatars {
					found = found || (a.ID == av.Msg.GetAvatar().GetId() && a.URL == av.Msg.GetAvatar().GetUrl())
				}
				if !found {
					t.Errorf("profile.json avatars = %+v, want avatar %d", profile.Avatars, av.Msg.GetAvatar().GetId())
				}
			})

			t.Run("Chats", func(t *testing.T) {
				var chats struct {
					Chats []struct {
						ID           string `json:"id"`
						Participants []struct {
							UserID int32 `json:"userId"`
						} `json:"participants"`
					} `json:"chats"`
				}
				decode(t, files, "chats.json", &chats)
				var ids []string
				for _, ch := range chats.Chats {
					ids = append(ids, ch.ID)
					if len(ch.Participants) != 2 {
						t.Errorf("chat %s has participants %+v, want alice and bob", ch.ID, ch.Participants)
					}
				}
				slices.Sort(ids)
				want := []string{group.GetId(), private.GetId()}
				slices.Sort(want)
				if !slices.Equal(ids, want) {
					t.Errorf("chats.json has chats %v, want %v", ids, want)
				}
			})

			t.Run("Messages", func(t *testing.T) {
				got := map[string]exportedMessage{}
				for _, chatID := range []string{group.GetId(), private.GetId()} {
					var doc struct {
						ChatID   string            `json:"chatId"`
						Messages []exportedMessage `json:"messages"`
					}
					decode(t, files, "messages/"+chatID+".json", &doc)
					if doc.ChatID != chatID {
						t.Errorf("messages/%s.json is of chat %q", chatID, doc.ChatID)
					}
					for _, m := range doc.Messages {
						got[m.ID] = m
					}
				}
				if len(got) != len(sent) {
					t.Errorf("the zip has %d messages, want %d", len(got), len(sent))
				}
				for _, m := range sent {
					e, ok := got[m.GetId()]
					if !ok {
						t.Errorf("message %s (%q) is missing", m.GetId(), m.GetText())
						continue
					}
					if e.SenderID != m.GetSenderId() || e.Text != m.GetText() || len(e.Attachments) != len(m.GetAttachments()) {
						t.Errorf("message %s = %+v, want sender %d, text %q, %d attachments", m.GetId(), e, m.GetSenderId(), m.GetText(), len(m.GetAttachments()))
					}
				}
			})

			t.Run("Files", func(t *testing.T) {
				var index struct {
					Files []struct {
						ID     string `json:"id"`
						Path   string `json:"path"`
						SHA256 string `json:"sha256"`
						Avatar bool   `json:"avatar"`
					} `json:"files"`
				}
				decode(t, files, "files.json", &index)
				want := map[string][]byte{avatarMedia.GetId(): avatarPNG, aliceMedia.GetId(): aliceFile}
				if len(index.Files) != len(want) {
					t.Errorf("files.json lists %+v, want alice's avatar and file only", index.Files)
				}
				for _, f := range index.Files {
					data, ok := want[f.ID]
					if !ok {
						t.Errorf("files.json lists %s, not alice's", f.ID)
						continue
					}
					if !bytes.Equal(files[f.Path], data) {
						t.Errorf("%s holds %d bytes, not the %d uploaded", f.Path, len(files[f.Path]), len(data))
					}
				}
				for name := range files {
					if strings.HasPrefix(name, "files/") && strings.Contains(name, bobMedia.GetId()) {
						t.Errorf("the zip holds bob's file %s", name)
					}
				}
			})

			t.Run("OncePerDay", func(t *testing.T) {
				_, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, alice.Token))
				servertest.WantCode(t, err, connect.CodeResourceExhausted)
				var cerr *connect.Error
				errors.As(err, &cerr)
				var retry *errdetails.RetryInfo
				for _, d := range cerr.Details() {
					if v, derr := d.Value(); derr == nil {
						if r, ok := v.(*errdetails.RetryInfo); ok {
							retry = r
						}
					}
				}
				next := first.GetCreatedAt().AsTime().Add(24 * time.Hour)
				if retry == nil || retry.GetRetryDelay().AsDuration() > 24*time.Hour || retry.GetRetryDelay().AsDuration() < 23*time.Hour {
					t.Errorf("RetryInfo = %v, want about 24 h", retry)
				}
				if !strings.Contains(cerr.Message(), next.UTC().Format(time.RFC3339)) {
					t.Errorf("message %q does not say %s", cerr.Message(), next.UTC().Format(time.RFC3339))
				}
			})

			t.Run("OwnExportsOnly", func(t *testing.T) {
				_, err := exp.GetExport(ctx, servertest.WithToken(&parleyv1.GetExportRequest{ExportId: first.GetId()}, bob.Token))
				servertest.WantCode(t, err, connect.CodeNotFound)
				_, err = exp.GetExport(ctx, servertest.WithToken(&parleyv1.GetExportRequest{ExportId: bson.NewObjectID().Hex()}, alice.Token))
				servertest.WantCode(t, err, connect.CodeNotFound)
				_, err = exp.GetExport(ctx, servertest.WithToken(&parleyv1.GetExportRequest{ExportId: "nope"}, alice.Token))
				servertest.WantCode(t, err, connect.CodeInvalidArgument)
				_, err = exp.GetExport(ctx, servertest.WithToken(&parleyv1.GetExportRequest{ExportId: first.GetId()}, ""))
				servertest.WantCode(t, err, connect.CodeUnauthenticated)
				list, err := exp.ListExports(ctx, servertest.WithToken(&parleyv1.ListExportsRequest{}, bob.Token))
				if err != nil {
					t.Fatalf("ListExports: %v", err)
				}
				if n := len(list.Msg.GetExports()); n != 0 {
					t.Errorf("bob lists %d exports, want none", n)
				}
				list, err = exp.ListExports(ctx, servertest.WithToken(&parleyv1.ListExportsRequest{}, alice.Token))
				if err != nil {
					t.Fatalf("ListExports: %v", err)
				}
				if e := list.Msg.GetExports(); len(e) != 1 || e[0].GetId() != first.GetId() || e[0].GetDownloadUrl() == "" {
					t.Errorf("alice lists %v, want her ready export", e)
				}
			})

			t.Run("TamperedURL", func(t *testing.T) {
				u, err := url.Parse(ready.GetDownloadUrl())
				if err != nil {
					t.Fatal(err)
				}
				q := u.Query()
				sig := q.Get("signature")
				for name, change := range map[string]func(url.Values) string{
					"signature": func(q url.Values) string {
						flip := "A"
						if sig[:1] == "A" {
							flip = "B"
						}
						q.Set("signature", flip+sig[1:])
						return u.Path
					},
					"expires": func(q url.Values) string {
						q.Set("expires", "99999999999")
						return u.Path
					},
					"export": func(url.Values) string { return "/exports/" + bson.NewObjectID().Hex() },
					"none":   func(q url.Values) string { q.Del("signature"); q.Del("key"); q.Del("expires"); return u.Path },
				} {
					q2 := url.Values{}
					for k, v := range q {
						q2[k] = slices.Clone(v)
					}
					path := change(q2)
					res := get(t, api, path+"?"+q2.Encode())
					if res.StatusCode != http.StatusForbidden {
						t.Errorf("%s changed: status %d, want 403", name, res.StatusCode)
					}
				}
				// Nor does a bearer token stand in for the signature.
				r, _ := http.NewRequest(http.MethodGet, api.URL+u.Path, nil)
				r.Header.Set("Authorization", "Bearer "+alice.Token)
				res, err := http.DefaultClient.Do(r)
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if res.StatusCode != http.StatusForbidden {
					t.Errorf("with a token and no signature: status %d, want 403", res.StatusCode)
				}
			})

			t.Run("Expiry", func(t *testing.T) {
				var doc struct {
					FileKey string `bson:"fileKey"`
				}
				id, _ := bson.ObjectIDFromHex(first.GetId())
				if err := api.App.Mongo().Collection("exports").FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc); err != nil {
					t.Fatal(err)
				}
				storage := api.App.MediaStorage()
				clock.Advance(24*time.Hour + time.Minute)
				if res := get(t, api, ready.GetDownloadUrl()); res.StatusCode != http.StatusForbidden {
					t.Errorf("expired URL: status %d, want 403", res.StatusCode)
				}
				// The worker deletes the zip.
				deadline := time.Now().Add(30 * time.Second)
				for {
					obj, err := storage.Open(ctx, doc.FileKey)
					if errors.Is(err, media.ErrNoObject) {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					obj.Close()
					if time.Now().After(deadline) {
						t.Fatalf("the expired zip %s is still stored", doc.FileKey)
					}
					time.Sleep(10 * time.Millisecond)
				}
				login, err := c.Auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Login: alice.Username, Password: servertest.Password}))
				if err != nil {
					t.Fatalf("Login: %v", err)
				}
				token := login.Msg.GetTokens().GetAccessToken()
				e := waitState(t, exp, token, first.GetId(), parleyv1.ExportState_EXPORT_STATE_EXPIRED)
				if e.GetDownloadUrl() != "" {
					t.Errorf("expired export has download URL %q", e.GetDownloadUrl())
				}
				// A day later, another export is allowed.
				res, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, token))
				if err != nil {
					t.Fatalf("RequestExport a day later: %v", err)
				}
				if !res.Msg.GetCreated() || res.Msg.GetExport().GetId() == first.GetId() {
					t.Errorf("RequestExport a day later = %v, want a new export", res.Msg)
				}
				waitState(t, exp, token, res.Msg.GetExport().GetId(), parleyv1.ExportState_EXPORT_STATE_READY)
			})
		})
	}
}

// TestExportWorker_TakesOverDeadLease: a job whose worker died (its
// lease ran out) is finished by another instance, and the dead
// attempt's partial zip is removed.
func TestExportWorker_TakesOverDeadLease(t *testing.T) {
	// The instance that takes the job over starts once the job is as a
	// dead worker left it.
	d := newDeployment(t)
	clock := d.clock
	api := d.instance(t, time.Hour)
	p := servertest.Protocols[1] // gRPC; the main test covers every protocol
	c := servertest.NewClients(api, p)
	exp := servertest.Client(api, p, parleyv1connect.NewExportServiceClient)
	ctx := context.Background()
	carol := servertest.Register(t, c.Auth, servertest.UniqueName("carol"))
	dave := servertest.Register(t, c.Auth, servertest.UniqueName("dave"))
	group := servertest.GroupChat(t, c.Chat, carol.Token, "lease group", dave.ID)
	msg := servertest.Send(t, c.Message, dave.Token, group.GetId(), "from dave, before the crash")

	// What a worker leaves when it dies part-way: the job running on
	// its lease, and half a zip. The lease has a minute left.
	jobs := api.App.Mongo().Collection("exports")
	storage := api.App.MediaStorage()
	var id bson.ObjectID
	err := func() error {
		res, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, carol.Token))
		if err != nil {
			return err
		}
		id, _ = bson.ObjectIDFromHex(res.Msg.GetExport().GetId())
		up, err := jobs.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "state", Value: "pending"}}, bson.D{{Key: "$set", Value: bson.D{
			{Key: "state", Value: "running"}, {Key: "leaseOwner", Value: "dead-instance"},
			{Key: "leaseUntil", Value: clock.Now().Add(time.Minute)}, {Key: "attempts", Value: 1},
		}}})
		if err == nil && up.MatchedCount != 1 {
			err = errors.New("the export was not pending")
		}
		return err
	}()
	if err != nil {
		t.Fatal(err)
	}
	partial := "export-" + id.Hex() + "-1.zip"
	if err := storage.Put(ctx, partial, strings.NewReader("PK half"), 7, "application/zip"); err != nil {
		t.Fatal(err)
	}

	res, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, carol.Token))
	if err != nil {
		t.Fatalf("RequestExport while running: %v", err)
	}
	if res.Msg.GetCreated() || res.Msg.GetExport().GetId() != id.Hex() || res.Msg.GetExport().GetState() != parleyv1.ExportState_EXPORT_STATE_RUNNING {
		t.Fatalf("RequestExport while running = %v, want the running export %s", res.Msg, id.Hex())
	}

	// Another instance starts; once the lease has run out, its worker
	// takes the job.
	d.instance(t, 20*time.Millisecond)
	clock.Advance(2 * time.Minute)
	ready := waitState(t, exp, carol.Token, id.Hex(), parleyv1.ExportState_EXPORT_STATE_READY)
	if ready.GetAttempts() != 2 {
		t.Errorf("attempts = %d, want 2 (the dead one and the one that finished)", ready.GetAttempts())
	}
	if _, err := storage.Open(ctx, partial); !errors.Is(err, media.ErrNoObject) {
		t.Errorf("the dead attempt's zip: Open = %v, want it removed", err)
	}
	dl := get(t, api, ready.GetDownloadUrl())
	body, _ := io.ReadAll(dl.Body)
	if dl.StatusCode != http.StatusOK {
		t.Fatalf("GET download_url: %d %s", dl.StatusCode, body)
	}
	var doc struct {
		Messages []exportedMessage `json:"messages"`
	}
	decode(t, unzip(t, body), "messages/"+group.GetId()+".json", &doc)
	if len(doc.Messages) != 1 || doc.Messages[0].ID != msg.GetId() || doc.Messages[0].Text != msg.GetText() {
		t.Errorf("messages = %+v, want dave's message %s", doc.Messages, msg.GetId())
	}
}

// TestExportWorker_RetriesThenFails: an export whose attempts fail is
// retried up to MaxAttempts times, then fails, and frees the user to ask
// again at once.
func TestExportWorker_RetriesThenFails(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t), servertest.WithConfig(func(c *app.Config) {
		c.Export.PollInterval = 20 * time.Millisecond
		c.Export.RetryDelay = time.Millisecond
		c.Export.MaxAttempts = 2
		// Every attempt fails to write its zip.
		c.Export.TempDir = t.TempDir() + "/missing"
	}))
	p := servertest.Protocols[0]
	c := servertest.NewClients(srv, p)
	exp := servertest.Client(srv, p, parleyv1connect.NewExportServiceClient)
	ctx := context.Background()
	erin := servertest.Register(t, c.Auth, servertest.UniqueName("erin"))

	res, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, erin.Token))
	if err != nil {
		t.Fatalf("RequestExport: %v", err)
	}
	failed := waitState(t, exp, erin.Token, res.Msg.GetExport().GetId(), parleyv1.ExportState_EXPORT_STATE_FAILED)
	if failed.GetAttempts() != 2 || failed.GetFinishedAt() == nil || failed.GetDownloadUrl() != "" {
		t.Errorf("failed export = %v, want 2 attempts, a finish time and no URL", failed)
	}
	again, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, erin.Token))
	if err != nil {
		t.Fatalf("RequestExport after a failure: %v", err)
	}
	if !again.Msg.GetCreated() || again.Msg.GetExport().GetId() == failed.GetId() {
		t.Errorf("RequestExport after a failure = %v, want a new export", again.Msg)
	}
}

// TestExportService_FailedBeforeQuotaFreed: an export seen failed frees
// the user to ask again, even before its worker's second write (the
// quota's) has landed, as a client that asks again on FAILED may find.
func TestExportService_FailedBeforeQuotaFreed(t *testing.T) {
	// The worker looks for work at start-up only: the job is as the
	// test leaves it.
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t), servertest.WithConfig(func(c *app.Config) {
		c.Export.PollInterval = time.Hour
	}))
	p := servertest.Protocols[0]
	c := servertest.NewClients(srv, p)
	exp := servertest.Client(srv, p, parleyv1connect.NewExportServiceClient)
	ctx := context.Background()
	fay := servertest.Register(t, c.Auth, servertest.UniqueName("fay"))

	first, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, fay.Token))
	if err != nil {
		t.Fatalf("RequestExport: %v", err)
	}
	id, _ := bson.ObjectIDFromHex(first.Msg.GetExport().GetId())
	// The failure recorded, the quota not yet freed: fail's first write.
	up, err := srv.App.Mongo().Collection("exports").UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: "failed"}, {Key: "finishedAt", Value: time.Now()}}}})
	if err != nil || up.MatchedCount != 1 {
		t.Fatalf("mark the export failed: %v, %+v", err, up)
	}
	again, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, fay.Token))
	if err != nil {
		t.Fatalf("RequestExport after a failure: %v", err)
	}
	if !again.Msg.GetCreated() || again.Msg.GetExport().GetId() == id.Hex() {
		t.Fatalf("RequestExport after a failure = %v, want a new export", again.Msg)
	}
	// The new export holds the quota as any other: a third request
	// returns it.
	third, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, fay.Token))
	if err != nil {
		t.Fatalf("RequestExport while pending: %v", err)
	}
	if third.Msg.GetCreated() || third.Msg.GetExport().GetId() != again.Msg.GetExport().GetId() {
		t.Errorf("RequestExport while pending = %v, want export %s", third.Msg, again.Msg.GetExport().GetId())
	}
}

// TestExportService_ConcurrentRequests: requests of one user at once
// start one export, which they all return.
func TestExportService_ConcurrentRequests(t *testing.T) {
	// The worker looks for work at start-up only: the export stays
	// pending while the requests run.
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t), servertest.WithConfig(func(c *app.Config) {
		c.Export.PollInterval = time.Hour
	}))
	p := servertest.Protocols[1]
	c := servertest.NewClients(srv, p)
	exp := servertest.Client(srv, p, parleyv1connect.NewExportServiceClient)
	frank := servertest.Register(t, c.Auth, servertest.UniqueName("frank"))

	const n = 8
	type result struct {
		id      string
		created bool
		err     error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			res, err := exp.RequestExport(context.Background(), servertest.WithToken(&parleyv1.RequestExportRequest{}, frank.Token))
			if err != nil {
				results <- result{err: err}
				return
			}
			results <- result{id: res.Msg.GetExport().GetId(), created: res.Msg.GetCreated()}
		}()
	}
	created := 0
	ids := map[string]bool{}
	for range n {
		r := <-results
		if r.err != nil {
			t.Errorf("RequestExport: %v", r.err)
			continue
		}
		ids[r.id] = true
		if r.created {
			created++
		}
	}
	if created != 1 || len(ids) != 1 {
		t.Errorf("%d requests created %d exports, returned ids %v; want one created, one id", n, created, ids)
	}
	list, err := exp.ListExports(context.Background(), servertest.WithToken(&parleyv1.ListExportsRequest{}, frank.Token))
	if err != nil {
		t.Fatalf("ListExports: %v", err)
	}
	if len(list.Msg.GetExports()) != 1 {
		t.Errorf("ListExports = %v, want one export", list.Msg.GetExports())
	}
}

// TestExportService_DeleteUser: deleting an account's exports removes
// their records and zips.
func TestExportService_DeleteUser(t *testing.T) {
	_, api, _ := pair(t)
	p := servertest.Protocols[0]
	c := servertest.NewClients(api, p)
	exp := servertest.Client(api, p, parleyv1connect.NewExportServiceClient)
	ctx := context.Background()
	gina := servertest.Register(t, c.Auth, servertest.UniqueName("gina"))
	res, err := exp.RequestExport(ctx, servertest.WithToken(&parleyv1.RequestExportRequest{}, gina.Token))
	if err != nil {
		t.Fatalf("RequestExport: %v", err)
	}
	ready := waitState(t, exp, gina.Token, res.Msg.GetExport().GetId(), parleyv1.ExportState_EXPORT_STATE_READY)

	keys, err := keyring.Load(servertest.SharedStores(t).JWTKeyFile, false)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := export.New(slog.New(slog.DiscardHandler), api.App.Mongo(), api.App.DocLocks(), api.App.MediaStorage(), export.Config{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.DeleteUser(ctx, int(gina.ID)); err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	_, err = exp.GetExport(ctx, servertest.WithToken(&parleyv1.GetExportRequest{ExportId: ready.GetId()}, gina.Token))
	servertest.WantCode(t, err, connect.CodeNotFound)
	if res := get(t, api, ready.GetDownloadUrl()); res.StatusCode != http.StatusNotFound {
		t.Errorf("download after DeleteUser: status %d, want 404", res.StatusCode)
	}
	if _, err := api.App.MediaStorage().Open(ctx, "export-"+ready.GetId()+"-1.zip"); !errors.Is(err, media.ErrNoObject) {
		t.Errorf("the zip after DeleteUser: Open = %v, want it deleted", err)
	}
}

// The temporary zips that an instance which died while writing them left
// are deleted by the sweep, once untouched for hours; one being written
// stays.
func TestExport_AbandonedTempZipsDeleted(t *testing.T) {
	tmp := t.TempDir()
	abandoned, current := filepath.Join(tmp, "parley-export-1.zip"), filepath.Join(tmp, "parley-export-2.zip")
	other := filepath.Join(tmp, "notes.zip")
	for _, name := range []string{abandoned, current, other} {
		if err := os.WriteFile(name, []byte("zip"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-7 * time.Hour)
	for _, name := range []string{abandoned, other} {
		if err := os.Chtimes(name, long, long); err != nil {
			t.Fatal(err)
		}
	}
	d := newDeployment(t)
	servertest.New(t, d.db, servertest.WithConfig(func(c *app.Config) {
		c.MediaDir = d.dir
		c.Now = d.clock.Now
		c.Export.PollInterval = 20 * time.Millisecond
		c.Export.TempDir = tmp
	}))
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(abandoned); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the abandoned temporary zip is still there after 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, name := range []string{current, other} {
		if _, err := os.Stat(name); err != nil {
			t.Errorf("%s: %v, want it kept", filepath.Base(name), err)
		}
	}
}
