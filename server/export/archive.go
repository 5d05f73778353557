package export

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/media"
)

// Profiles renders a user's profile as the API does; user.Service
// implements it. The calls run as the user (auth.NewContext).
type Profiles interface {
	GetMe(context.Context, *connect.Request[parleyv1.GetMeRequest]) (*connect.Response[parleyv1.GetMeResponse], error)
	ListAvatars(context.Context, *connect.Request[parleyv1.ListAvatarsRequest]) (*connect.Response[parleyv1.ListAvatarsResponse], error)
	GetPrivacySettings(context.Context, *connect.Request[parleyv1.GetPrivacySettingsRequest]) (*connect.Response[parleyv1.GetPrivacySettingsResponse], error)
	ListBlockedUsers(context.Context, *connect.Request[parleyv1.ListBlockedUsersRequest]) (*connect.Response[parleyv1.ListBlockedUsersResponse], error)
}

// Chats renders a user's chats and their messages as the API does;
// chat.Service implements it. The calls run as the user.
type Chats interface {
	ListChats(context.Context, *connect.Request[parleyv1.ListChatsRequest]) (*connect.Response[parleyv1.ListChatsResponse], error)
	ListMessages(context.Context, *connect.Request[parleyv1.ListMessagesRequest]) (*connect.Response[parleyv1.ListMessagesResponse], error)
}

// Files are the files a user uploaded; media.Library implements it.
type Files interface {
	OwnFiles(ctx context.Context, userID int, fn func(media.OwnFile) error) error
	OpenOwn(ctx context.Context, f media.OwnFile) (media.Object, error)
}

// Sources are what an export reads.
type Sources struct {
	Profiles Profiles
	Chats    Chats
	Files    Files
}

// readme opens every zip, saying what it holds.
const readme = `Parley data export
==================

profile.json        your account (GetMe), your avatars (ListAvatars), your
                    privacy settings and the users you blocked
chats.json          every chat you are a member of, archived ones too, as
                    ListChats shows them to you: members, roles, your own
                    settings of each chat
messages/<id>.json  every message of chat <id> that you can read, as
                    ListMessages shows them to you: yours and the other
                    members' (they are your conversations), with their
                    attachments' metadata, reactions and replies
files.json          the files you uploaded and sent or made an avatar, and
                    where each one is in this zip
files/              those files, byte for byte

Files others sent are listed in the messages but not included; messages
you deleted for yourself are left out, as the API leaves them out.
Timestamps are RFC 3339, in UTC.
`

var jsonOut = protojson.MarshalOptions{}

// fileEntry is one line of files.json.
type fileEntry struct {
	ID          string    `json:"id"`
	Path        string    `json:"path"`
	FileName    string    `json:"fileName"`
	ContentType string    `json:"contentType"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	UploadedAt  time.Time `json:"uploadedAt"`
	ChatID      string    `json:"chatId,omitempty"`
	MessageID   string    `json:"messageId,omitempty"`
	Avatar      bool      `json:"avatar,omitempty"`
	GroupID     string    `json:"groupId,omitempty"`
}

// writeArchive writes the zip of userID's data to w, reading everything
// page by page and each file as a stream, so that nothing is held whole
// in memory.
func writeArchive(ctx context.Context, w io.Writer, src Sources, userID int, now time.Time) error {
	ctx = auth.NewContext(ctx, auth.Identity{UserID: userID})
	z := zip.NewWriter(w)
	a := archive{z: z, now: now}
	if err := a.text("README.txt", readme); err != nil {
		return err
	}
	if err := a.profile(ctx, src.Profiles); err != nil {
		return err
	}
	chatIDs, err := a.chats(ctx, src.Chats)
	if err != nil {
		return err
	}
	for _, id := range chatIDs {
		if err := a.messages(ctx, src.Chats, id); err != nil {
			return err
		}
	}
	if err := a.files(ctx, src.Files, userID); err != nil {
		return err
	}
	if err := z.Close(); err != nil {
		return fmt.Errorf("export zip: %w", err)
	}
	return nil
}

type archive struct {
	z   *zip.Writer
	now time.Time
}

func (a *archive) create(name string, method uint16) (io.Writer, error) {
	w, err := a.z.CreateHeader(&zip.FileHeader{Name: name, Method: method, Modified: a.now})
	if err != nil {
		return nil, fmt.Errorf("export zip %s: %w", name, err)
	}
	return w, nil
}

func (a *archive) text(name, s string) error {
	w, err := a.create(name, zip.Deflate)
	if err != nil {
		return err
	}
	_, err = io.WriteString(w, s)
	return err
}

func (a *archive) json(name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	return a.text(name, string(b)+"\n")
}

func raw(m proto.Message) (json.RawMessage, error) {
	b, err := jsonOut.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("export json: %w", err)
	}
	return b, nil
}

func (a *archive) profile(ctx context.Context, p Profiles) error {
	me, err := p.GetMe(ctx, connect.NewRequest(&parleyv1.GetMeRequest{}))
	if err != nil {
		return fmt.Errorf("export profile: %w", err)
	}
	avatars, err := p.ListAvatars(ctx, connect.NewRequest(&parleyv1.ListAvatarsRequest{}))
	if err != nil {
		return fmt.Errorf("export avatars: %w", err)
	}
	privacy, err := p.GetPrivacySettings(ctx, connect.NewRequest(&parleyv1.GetPrivacySettingsRequest{}))
	if err != nil {
		return fmt.Errorf("export privacy settings: %w", err)
	}
	var out struct {
		Me              json.RawMessage   `json:"me"`
		Avatars         []json.RawMessage `json:"avatars"`
		PrivacySettings json.RawMessage   `json:"privacySettings"`
		BlockedUsers    []json.RawMessage `json:"blockedUsers"`
	}
	out.Avatars, out.BlockedUsers = []json.RawMessage{}, []json.RawMessage{}
	if out.Me, err = raw(me.Msg.GetMe()); err != nil {
		return err
	}
	for _, av := range avatars.Msg.GetAvatars() {
		b, err := raw(av)
		if err != nil {
			return err
		}
		out.Avatars = append(out.Avatars, b)
	}
	if out.PrivacySettings, err = raw(privacy.Msg.GetSettings()); err != nil {
		return err
	}
	token := ""
	for {
		page, err := p.ListBlockedUsers(ctx, connect.NewRequest(&parleyv1.ListBlockedUsersRequest{PageSize: 200, PageToken: token}))
		if err != nil {
			return fmt.Errorf("export blocked users: %w", err)
		}
		for _, u := range page.Msg.GetUsers() {
			b, err := raw(u)
			if err != nil {
				return err
			}
			out.BlockedUsers = append(out.BlockedUsers, b)
		}
		if token = page.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	return a.json("profile.json", out)
}

// jsonArray writes a JSON document {"<key>": [...]} (after the fields of
// head) element by element.
type jsonArray struct {
	w   io.Writer
	n   int
	err error
}

func startArray(w io.Writer, head, key string) *jsonArray {
	arr := &jsonArray{w: w}
	_, arr.err = io.WriteString(w, "{"+head+`"`+key+`": [`)
	return arr
}

func (arr *jsonArray) add(m proto.Message) {
	if arr.err != nil {
		return
	}
	b, err := jsonOut.Marshal(m)
	if err != nil {
		arr.err = fmt.Errorf("export json: %w", err)
		return
	}
	sep := "\n  "
	if arr.n > 0 {
		sep = ",\n  "
	}
	arr.n++
	_, arr.err = io.WriteString(arr.w, sep+string(b))
}

func (arr *jsonArray) end() error {
	if arr.err != nil {
		return arr.err
	}
	_, err := io.WriteString(arr.w, "\n]}\n")
	return err
}

// chatReadings bounds how many times chats reads the user's chats.
const chatReadings = 5

// chats writes chats.json and returns the chats' ids.
func (a *archive) chats(ctx context.Context, c Chats) ([]string, error) {
	w, err := a.create("chats.json", zip.Deflate)
	if err != nil {
		return nil, err
	}
	arr := startArray(w, "", "chats")
	// ListChats pages by the latest activity: a chat that has some while
	// the pages are read moves to the top, past them, and one archived or
	// unarchived between the two lists moves between them. So the lists
	// are read again until a reading finds no chat not seen before, and
	// each chat is written once.
	var ids []string
	seen := map[string]bool{}
	for reading := 0; reading < chatReadings; reading++ {
		found := false
		for _, archived := range []bool{false, true} {
			token := ""
			for {
				page, err := c.ListChats(ctx, connect.NewRequest(&parleyv1.ListChatsRequest{PageSize: 200, PageToken: token, Archived: archived}))
				if err != nil {
					return nil, fmt.Errorf("export chats: %w", err)
				}
				for _, ch := range page.Msg.GetChats() {
					if seen[ch.GetId()] {
						continue
					}
					seen[ch.GetId()], found = true, true
					arr.add(ch)
					ids = append(ids, ch.GetId())
				}
				if token = page.Msg.GetNextPageToken(); token == "" {
					break
				}
			}
		}
		if !found {
			return ids, arr.end()
		}
	}
	// Still moving: this attempt fails, and a later one reads them again.
	return nil, fmt.Errorf("export chats: still finding new chats after %d readings", chatReadings)
}

// messages writes messages/<chatID>.json, from the oldest message on.
func (a *archive) messages(ctx context.Context, c Chats, chatID string) error {
	w, err := a.create("messages/"+chatID+".json", zip.Deflate)
	if err != nil {
		return err
	}
	arr := startArray(w, `"chatId": "`+chatID+`", `, "messages")
	var after int64
	for {
		page, err := c.ListMessages(ctx, connect.NewRequest(&parleyv1.ListMessagesRequest{
			ChatId: chatID, Cursor: &parleyv1.ListMessagesRequest_AfterSeq{AfterSeq: after}, Limit: 100,
		}))
		if err != nil {
			return fmt.Errorf("export messages of %s: %w", chatID, err)
		}
		msgs := page.Msg.GetMessages()
		for _, m := range msgs {
			arr.add(m)
		}
		// A page may hold none of the messages read, all deleted by
		// the user for itself: the next starts where the read stopped.
		if !page.Msg.GetHasMore() || page.Msg.GetPageEndSeq() <= after {
			break
		}
		after = page.Msg.GetPageEndSeq()
	}
	return arr.end()
}

// files writes every own file under files/ and their index, files.json.
func (a *archive) files(ctx context.Context, f Files, userID int) error {
	index := []fileEntry{}
	err := f.OwnFiles(ctx, userID, func(of media.OwnFile) error {
		obj, err := f.OpenOwn(ctx, of)
		if errors.Is(err, media.ErrNoObject) {
			// Deleted since it was listed: not the user's any more.
			return nil
		}
		if err != nil {
			return fmt.Errorf("export file %s: %w", of.ID.Hex(), err)
		}
		defer obj.Close()
		path := "files/" + of.ID.Hex() + "-" + safeName(of.FileName)
		w, err := a.create(path, zip.Store)
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, obj); err != nil {
			return fmt.Errorf("export file %s: %w", of.ID.Hex(), err)
		}
		index = append(index, fileEntry{
			ID: of.ID.Hex(), Path: path, FileName: of.FileName, ContentType: of.ContentType, Size: of.Size,
			SHA256: of.SHA256, UploadedAt: of.UploadedAt.UTC(), ChatID: hexOf(of.ChatID), MessageID: hexOf(of.MessageID),
			Avatar: of.Avatar, GroupID: hexOf(of.GroupID),
		})
		return nil
	})
	if err != nil {
		return err
	}
	return a.json("files.json", map[string]any{"files": index})
}

func hexOf(id *bson.ObjectID) string {
	if id == nil {
		return ""
	}
	return id.Hex()
}

// safeName keeps a file name (checked at upload: no separators, no
// control characters) from meaning a path in any unzip tool.
func safeName(name string) string {
	var b bytes.Buffer
	for _, r := range name {
		if r == '/' || r == '\\' || r < 0x20 || r == 0x7f {
			r = '_'
		}
		b.WriteRune(r)
	}
	s := strings.Trim(b.String(), ". ")
	if s == "" {
		return "file"
	}
	return s
}
