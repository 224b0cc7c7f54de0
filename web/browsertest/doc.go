// Package browsertest drives docket's dashboard in a real browser
// (Debian's Chromium, headless, through chromedp). It is a module of its
// own so that the browser driver stays out of docket's go.mod.
//
//	cd web/browsertest && go test ./...                        # the browser tests
//	cd web/browsertest && go test -run TestScreenshots -screenshots  # regenerate docs/screenshots
package browsertest
