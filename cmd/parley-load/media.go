package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
)

// mediaTransfer measures one large upload and download at a time.
func mediaTransfer(ctx context.Context, cfg config) error {
	if cfg.serverPID == 0 {
		return errors.New("media: set -server-pid to the server's process id")
	}
	users, err := register(ctx, cfg, 2)
	if err != nil {
		return err
	}
	alice, bob := users[0], users[1]
	chat, err := alice.chats.CreatePrivateChat(ctx, req(alice, &parleyv1.CreatePrivateChatRequest{PeerId: bob.id}))
	if err != nil {
		return err
	}
	chatID := chat.Msg.GetChat().GetId()
	hc := httpClient("connect")
	mediac := parleyv1connect.NewMediaServiceClient(hc, cfg.addr)
	var upRates, downRates, upMem, downMem []float64
	for round := range cfg.rounds {
		idle, err := rss(cfg.serverPID)
		if err != nil {
			return err
		}
		up, err := mediac.CreateUpload(ctx, req(alice, &parleyv1.CreateUploadRequest{
			Target:   &parleyv1.CreateUploadRequest_ChatId{ChatId: chatID},
			FileName: "big.bin", ContentType: "application/octet-stream", Size: cfg.size,
		}))
		if err != nil {
			return err
		}
		src := &randomReader{rng: rand.NewChaCha8([32]byte{byte(round)}), left: cfg.size, sum: sha256.New()}
		stop := sampleRSS(cfg.serverPID)
		start := time.Now()
		r, _ := http.NewRequestWithContext(ctx, http.MethodPut, cfg.addr+up.Msg.GetUploadUrl(), src)
		r.ContentLength = cfg.size
		r.Header.Set("Authorization", "Bearer "+alice.token)
		res, err := hc.Do(r)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		upTime := time.Since(start)
		peakUp := stop()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("upload: %s", res.Status)
		}
		id := up.Msg.GetMedia().GetId()
		if _, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
			ChatId: chatID, ClientMessageId: fmt.Sprintf("big-%d-%d", round, time.Now().UnixNano()), MediaIds: []string{id},
		})); err != nil {
			return err
		}
		stop = sampleRSS(cfg.serverPID)
		start = time.Now()
		r, _ = http.NewRequestWithContext(ctx, http.MethodGet, cfg.addr+up.Msg.GetMedia().GetUrl(), nil)
		r.Header.Set("Authorization", "Bearer "+bob.token)
		res, err = hc.Do(r)
		if err != nil {
			return err
		}
		got := sha256.New()
		n, err := io.Copy(got, res.Body)
		res.Body.Close()
		downTime := time.Since(start)
		peakDown := stop()
		if err != nil || res.StatusCode != http.StatusOK || n != cfg.size || string(got.Sum(nil)) != string(src.sum.Sum(nil)) {
			return fmt.Errorf("download: %s, %d bytes, %v, checksum match %v", res.Status, n, err, string(got.Sum(nil)) == string(src.sum.Sum(nil)))
		}
		mb := float64(cfg.size) / 1e6
		upRates, downRates = append(upRates, mb/upTime.Seconds()), append(downRates, mb/downTime.Seconds())
		upMem, downMem = append(upMem, float64(peakUp-idle)/(1<<20)), append(downMem, float64(peakDown-idle)/(1<<20))
		fmt.Printf("round %d: upload %.0f MB/s (%.1fs), download %.0f MB/s (%.1fs); server RSS idle %.1f MiB, peak +%.1f MiB up, +%.1f MiB down\n",
			round+1, upRates[round], upTime.Seconds(), downRates[round], downTime.Seconds(), float64(idle)/(1<<20), upMem[round], downMem[round])
		// Delete it, so the rounds do not fill the disk.
		var msgs *connect.Response[parleyv1.ListMessagesResponse]
		if msgs, err = alice.msgs.ListMessages(ctx, req(alice, &parleyv1.ListMessagesRequest{ChatId: chatID, Limit: 1})); err == nil {
			_, err = alice.msgs.DeleteMessage(ctx, req(alice, &parleyv1.DeleteMessageRequest{ChatId: chatID, MessageId: msgs.Msg.GetMessages()[0].GetId()}))
		}
		if err != nil {
			return err
		}
	}
	fmt.Printf("median of %d: upload %.0f MB/s, download %.0f MB/s, server memory above idle +%.1f MiB up, +%.1f MiB down\n",
		cfg.rounds, median(upRates), median(downRates), median(upMem), median(downMem))
	return result(cfg, record{Scenario: cfg.scenario, Phase: "media"},
		field{"size_mb", float64(cfg.size) / 1e6, 1}, field{"rounds", float64(cfg.rounds), 0},
		field{"upload_mb_per_s", median(upRates), 1}, field{"download_mb_per_s", median(downRates), 1},
		field{"upload_peak_mib", median(upMem), 1}, field{"download_peak_mib", median(downMem), 1})
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// sampleRSS samples a process's RSS every 20 ms until the returned
// function is called, which returns the peak.
func sampleRSS(pid int) func() int64 {
	var peak atomic.Int64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if v, err := rss(pid); err == nil && v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 {
		close(done)
		<-stopped
		return peak.Load()
	}
}

// randomReader yields left pseudo-random (incompressible) bytes, hashing
// them.
type randomReader struct {
	rng  *rand.ChaCha8
	left int64
	sum  hash.Hash
}

func (r *randomReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	r.rng.Read(p)
	r.sum.Write(p)
	r.left -= int64(len(p))
	return len(p), nil
}
