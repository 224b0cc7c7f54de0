// Command workflow shows docket's workflows on the SQLite default: an
// image pipeline that fans out one resize per image (a group), gathers
// the thumbnails into an album (a chord), then publishes it (a chain);
// and a report whose body runs with every member's outcome even when one
// fails (ThenOutcomes).
//
//	go run ./examples/workflow                    # ./workflow.db
//	DOCKET_URL=memory: go run ./examples/workflow # nothing on disk
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/docketq/docket"
)

// Image is one picture to resize.
type Image struct {
	Name  string `json:"name"`
	Width int    `json:"width"`
}

// Thumb is a resized picture.
type Thumb struct {
	Name  string `json:"name"`
	Bytes int    `json:"bytes"`
}

// Album gathers the thumbnails.
type Album struct {
	Thumbs []Thumb `json:"thumbs"`
	Bytes  int     `json:"bytes"`
}

var (
	resize = docket.NewTask("images.resize", func(ctx context.Context, img Image) (Thumb, error) {
		if strings.HasSuffix(img.Name, ".txt") {
			return Thumb{}, docket.Permanent(fmt.Errorf("%s is not an image", img.Name))
		}
		return Thumb{Name: "thumb-" + img.Name, Bytes: img.Width * 10}, nil
	}, docket.MaxRetries(3))

	makeAlbum = docket.NewTask("images.album", func(ctx context.Context, thumbs []Thumb) (Album, error) {
		a := Album{Thumbs: thumbs}
		for _, t := range thumbs {
			a.Bytes += t.Bytes
		}
		return a, nil
	})

	publish = docket.NewTask("images.publish", func(ctx context.Context, a Album) (string, error) {
		return fmt.Sprintf("published %d thumbnails (%d bytes)", len(a.Thumbs), a.Bytes), nil
	})

	// report runs with each resize's outcome, failed ones included.
	report = docket.NewTask("images.report", func(ctx context.Context, outs []docket.Outcome[Thumb]) (string, error) {
		var lines []string
		for _, o := range outs {
			if o.OK() {
				lines = append(lines, "  ok     "+o.Result.Name)
			} else {
				lines = append(lines, "  failed "+o.Error)
			}
		}
		return strings.Join(lines, "\n"), nil
	})
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "workflow:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	url := os.Getenv("DOCKET_URL")
	if url == "" {
		url = "sqlite:workflow.db"
	}
	q, err := docket.Open(ctx, url)
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.Register(resize, makeAlbum, publish, report); err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go q.Run(runCtx)

	resizes := func(names ...string) docket.Flow[[]Thumb] {
		var steps []docket.Flow[Thumb]
		for _, n := range names {
			steps = append(steps, docket.Step(resize, Image{Name: n, Width: 200}))
		}
		return docket.Group(steps...)
	}

	// Fan out, fan in, then one more step: the compiler checks that
	// makeAlbum takes []Thumb and publish takes an Album.
	album, err := docket.EnqueueFlow(ctx, q, docket.Then(docket.Then(resizes("a.jpg", "b.jpg", "c.jpg"), makeAlbum), publish))
	if err != nil {
		return err
	}
	msg, err := album.Wait(ctx)
	if err != nil {
		return err
	}
	fmt.Println(msg)

	// One member fails: a plain chord fails, naming the step, and its
	// body never runs.
	broken, err := docket.EnqueueFlow(ctx, q, docket.Then(resizes("d.jpg", "notes.txt"), makeAlbum))
	if err != nil {
		return err
	}
	if _, err := broken.Wait(ctx); errors.Is(err, docket.ErrTaskFailed) {
		fmt.Println("album failed:", strings.SplitN(err.Error(), "\n", 2)[0])
	} else {
		return fmt.Errorf("the broken album: %v", err)
	}

	// ThenOutcomes runs the body with every outcome instead.
	summary, err := docket.EnqueueFlow(ctx, q, docket.ThenOutcomes(resizes("e.jpg", "todo.txt", "f.jpg"), report))
	if err != nil {
		return err
	}
	text, err := summary.Wait(ctx)
	if err != nil {
		return err
	}
	fmt.Println("report:\n" + text)

	steps, err := summary.Info(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("the report's workflow %s had %d steps\n", summary.ID(), len(steps))
	return nil
}
