//! A real browser for the console's tests: Debian's Chromium, headless, driven through
//! chromedriver (both installed by `.ci/run`), with axe-core to check each page
//! against WCAG 2.2 AA.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the tests leave their screenshots (the README shows some of them).
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("THRIVE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
        })
}

fn axe_source() -> String {
    let path = std::env::var_os("THRIVE_AXE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/axe/node_modules/axe-core/axe.min.js")
        });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "axe-core is needed at {} ({e}): `npm install --prefix target/axe axe-core@4` (.ci/run does)",
            path.display()
        )
    })
}

pub struct Browser {
    pub client: Client,
    pub base: String,
    pub downloads: tempfile::TempDir,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group: the browser goes with it.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// A fresh headless Chromium (a profile of its own) for the gateway at `base`.
    pub async fn start(base: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver =
            Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver (Debian package chromium-driver; .ci/run installs it)");
        let downloads = tempfile::tempdir().unwrap();
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--lang=en-GB"],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        }))
        .unwrap();
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::rustls()
                .unwrap()
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    return Self {
                        client,
                        base: base.to_owned(),
                        downloads,
                        driver,
                    };
                }
                Err(e) => {
                    last = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("chromedriver did not start a browser: {last:?}");
    }

    pub async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// The page's path and query.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// What a reader sees of the page.
    pub async fn text(&self) -> String {
        self.client
            .execute("return document.body.innerText", vec![])
            .await
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn heading(&self) -> String {
        self.client
            .find(Locator::Css("h1"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Marks the page so that [`Browser::wait_for_new_page`] can tell it has gone.
    async fn mark(&self) {
        self.client
            .execute("window.__thrive_old_page = true", vec![])
            .await
            .unwrap();
    }

    /// Waits until the page marked by [`Browser::mark`] is replaced and loaded.
    async fn wait_for_new_page(&self) {
        for _ in 0..200 {
            let done = self
                .client
                .execute(
                    "return window.__thrive_old_page !== true && document.readyState === 'complete'",
                    vec![],
                )
                .await
                .map(|v| v.as_bool() == Some(true))
                .unwrap_or(false);
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the page did not change");
    }

    pub async fn click_link(&self, text: &str) {
        self.mark().await;
        self.client
            .find(Locator::XPath(&format!("//a[normalize-space()='{text}']")))
            .await
            .unwrap_or_else(|e| panic!("no link `{text}`: {e}"))
            .click()
            .await
            .unwrap();
        self.wait_for_new_page().await;
    }

    /// Clicks a button that sends a form and waits for the answer page (a download
    /// leaves the page as it is: use [`Browser::downloaded`]).
    pub async fn click_button(&self, text: &str) {
        self.mark().await;
        self.press(text).await;
        self.wait_for_new_page().await;
    }

    pub async fn press(&self, text: &str) {
        self.client
            .find(Locator::XPath(&format!(
                "//button[normalize-space()='{text}']"
            )))
            .await
            .unwrap_or_else(|e| panic!("no button `{text}`: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub async fn fill(&self, id: &str, value: &str) {
        let field = self.client.find(Locator::Id(id)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    pub async fn choose(&self, id: &str, value: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap()
            .select_by_value(value)
            .await
            .unwrap();
    }

    /// Signs in on the development sign-in page as `client`.
    pub async fn dev_sign_in(&self, client: &str) {
        self.client
            .find(Locator::XPath(&format!(
                "//input[@name='client'][@value='{client}']"
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.click_button("Sign in").await;
    }

    /// Runs axe-core on the page: no violation of WCAG 2.0, 2.1 or 2.2 A and AA.
    pub async fn assert_accessible(&self, page: &str) {
        self.client.execute(&axe_source(), vec![]).await.unwrap();
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {runOnly: {type: 'tag', values:
                   ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22a', 'wcag22aa']}})
                   .then(r => done(r.violations.map(v => v.id + ' (' + v.impact + '): ' + v.help
                     + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', '))))
                   .catch(e => done(['axe failed: ' + e]));",
                vec![],
            )
            .await
            .unwrap();
        let violations: Vec<String> = serde_json::from_value(found).unwrap();
        assert!(violations.is_empty(), "{page}: {violations:#?}");
    }

    /// Saves a screenshot of the page as `<name>.png` in [`screenshot_dir`].
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        // Both databases' runs take the same pictures at once: each lands whole.
        let part = dir.join(format!("{name}.{}.part", uuid::Uuid::new_v4().simple()));
        std::fs::write(&part, png).unwrap();
        std::fs::rename(part, dir.join(format!("{name}.png"))).unwrap();
    }

    /// The one file downloaded so far, once complete.
    pub async fn downloaded(&self) -> (String, Vec<u8>) {
        for _ in 0..100 {
            let files: Vec<_> = std::fs::read_dir(self.downloads.path())
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                // Chromium writes `.org.chromium.*` and `*.crdownload` while it downloads.
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    !name.starts_with('.') && !name.ends_with(".crdownload")
                })
                .collect();
            if let [file] = files.as_slice() {
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                return (name, std::fs::read(file).unwrap());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nothing was downloaded");
    }

    pub async fn close(self) {
        let client = self.client.clone();
        client.close().await.unwrap();
    }
}
