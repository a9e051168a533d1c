//! The canvas: the images forming, upscaled with crisp pixels, a faint grid on the soft-token
//! patches and the patch being sampled outlined. With the wgpu renderer it is drawn by
//! `shaders/canvas.wgsl` through a paint callback; otherwise (the glow renderer, or tests) by
//! an egui image with nearest sampling and painted lines.

use std::num::NonZeroU64;
use std::sync::Arc;

use eframe::egui::{self, Color32, ColorImage, Rect, Stroke, TextureHandle, TextureOptions, Vec2};
use eframe::egui_wgpu::{self, wgpu};
use image::{RgbImage, RgbaImage};

/// Source of the canvas shader.
const SHADER: &str = include_str!("../../../shaders/canvas.wgsl");

/// Images per mosaic row.
const MOSAIC_COLUMNS: usize = 4;

/// Opacity of the patch grid.
const GRID_ALPHA: f32 = 0.18;

/// The latest mosaic of the images forming, shared with the paint callback.
#[derive(Debug)]
pub struct CanvasImage {
    /// RGBA mosaic of all images in the batch, row-major.
    pub mosaic: RgbaImage,
    /// Side of one image in pixels.
    pub tile_size: u32,
    /// Side of one soft-token patch in pixels.
    pub patch_size: u32,
    /// Row-major index of the patch sampled next in every image, if sampling goes on.
    pub highlight: Option<usize>,
    /// Changes whenever the pixels change, so the GPU texture uploads once per preview.
    pub version: u64,
}

/// Contents of the canvas and the egui texture of its fallback path.
#[derive(Default)]
pub struct Canvas {
    image: Option<Arc<CanvasImage>>,
    texture: Option<TextureHandle>,
    version: u64,
}

impl Canvas {
    /// Shows `images` (one batch) with the patch `highlight` outlined.
    pub fn set_images(
        &mut self,
        ctx: &egui::Context,
        images: &[RgbImage],
        patch_size: u32,
        highlight: Option<usize>,
    ) {
        let Some(mosaic) = mosaic(images) else {
            return;
        };
        self.version += 1;
        let color_image = ColorImage::from_rgba_unmultiplied(
            [mosaic.width() as usize, mosaic.height() as usize],
            mosaic.as_raw(),
        );
        match &mut self.texture {
            Some(texture) => texture.set(color_image, TextureOptions::NEAREST),
            None => {
                self.texture =
                    Some(ctx.load_texture("canvas", color_image, TextureOptions::NEAREST));
            }
        }
        self.image = Some(Arc::new(CanvasImage {
            tile_size: images.first().map_or(1, RgbImage::width),
            mosaic,
            patch_size: patch_size.max(1),
            highlight,
            version: self.version,
        }));
    }

    /// Removes the image.
    pub fn clear(&mut self) {
        self.image = None;
        self.texture = None;
    }

    /// Returns whether an image is shown.
    pub fn has_image(&self) -> bool {
        self.image.is_some()
    }

    /// Draws the canvas into the space left in `ui`, through the shader when `gpu` is set.
    pub fn show(&self, ui: &mut egui::Ui, gpu: bool) {
        let Some(image) = &self.image else {
            ui.centered_and_justified(|ui| {
                ui.weak("Type a prompt and press Generate to watch an image form here.");
            });
            return;
        };
        let rect = fitted_rect(ui, image);
        let response = ui.allocate_rect(rect, egui::Sense::hover());
        response
            .widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, "generated image"));
        let colors = LineColors::of(ui.visuals());
        if gpu {
            let viewport_px = rect.size() * ui.pixels_per_point();
            ui.painter().add(egui_wgpu::Callback::new_paint_callback(
                rect,
                CanvasCallback {
                    image: Arc::clone(image),
                    uniforms: Uniforms::new(image, viewport_px, colors),
                },
            ));
        } else if let Some(texture) = &self.texture {
            egui::Image::new((texture.id(), rect.size())).paint_at(ui, rect);
            paint_grid(ui.painter(), rect, image, colors);
        }
    }
}

/// Returns the largest integer multiple of the mosaic's size that fits the space left.
fn fitted_rect(ui: &egui::Ui, image: &CanvasImage) -> Rect {
    let available = ui.available_size();
    let size = Vec2::new(image.mosaic.width() as f32, image.mosaic.height() as f32);
    let pixels_per_point = ui.pixels_per_point();
    let fit = (available.x / size.x).min(available.y / size.y) * pixels_per_point;
    let scale = if fit >= 1.0 { fit.floor() } else { fit } / pixels_per_point;
    let rect = Rect::from_min_size(ui.cursor().min, size * scale.max(0.01));
    rect.translate(Vec2::new((available.x - rect.width()).max(0.0) / 2.0, 0.0))
}

/// Lays `images` out left to right, [`MOSAIC_COLUMNS`] to a row. Returns `None` for no images.
pub fn mosaic(images: &[RgbImage]) -> Option<RgbaImage> {
    let first = images.first()?;
    let side = first.width();
    let columns = images.len().min(MOSAIC_COLUMNS) as u32;
    let rows = images.len().div_ceil(MOSAIC_COLUMNS) as u32;
    let mut canvas =
        RgbaImage::from_pixel(side * columns, side * rows, image::Rgba([0, 0, 0, 255]));
    for (index, tile) in images.iter().enumerate() {
        let x = (index as u32 % columns) * side;
        let y = (index as u32 / columns) * side;
        for (dx, dy, pixel) in tile.enumerate_pixels() {
            if dx < side && dy < side {
                let [r, g, b] = pixel.0;
                canvas.put_pixel(x + dx, y + dy, image::Rgba([r, g, b, 255]));
            }
        }
    }
    Some(canvas)
}

#[derive(Clone, Copy, Debug)]
struct LineColors {
    grid: Color32,
    highlight: Color32,
}

impl LineColors {
    fn of(visuals: &egui::Visuals) -> Self {
        Self {
            grid: visuals.text_color(),
            highlight: visuals.selection.stroke.color,
        }
    }
}

/// Grid and highlight of the fallback path, drawn with egui shapes over the image.
fn paint_grid(painter: &egui::Painter, rect: Rect, image: &CanvasImage, colors: LineColors) {
    let texels = image.mosaic.width() as f32;
    let point_per_texel = rect.width() / texels;
    let step = image.patch_size as f32 * point_per_texel;
    let stroke = Stroke::new(1.0, colors.grid.gamma_multiply(GRID_ALPHA));
    let columns = image.mosaic.width() / image.patch_size;
    let rows = image.mosaic.height() / image.patch_size;
    for column in 1..columns {
        let x = rect.left() + column as f32 * step;
        painter.vline(x, rect.y_range(), stroke);
    }
    for row in 1..rows {
        let y = rect.top() + row as f32 * step;
        painter.hline(rect.x_range(), y, stroke);
    }
    let Some(highlight) = image.highlight else {
        return;
    };
    let per_row = (image.tile_size / image.patch_size) as usize;
    let tiles_x = image.mosaic.width() / image.tile_size;
    let tiles_y = image.mosaic.height() / image.tile_size;
    let tile_points = image.tile_size as f32 * point_per_texel;
    let cell = Vec2::new((highlight % per_row) as f32, (highlight / per_row) as f32) * step;
    for tile_y in 0..tiles_y {
        for tile_x in 0..tiles_x {
            let origin = rect.min + Vec2::new(tile_x as f32, tile_y as f32) * tile_points;
            let patch = Rect::from_min_size(origin + cell, Vec2::splat(step));
            painter.rect_stroke(
                patch,
                0.0,
                Stroke::new(2.0, colors.highlight),
                egui::StrokeKind::Inside,
            );
        }
    }
}

/// Uniforms of `shaders/canvas.wgsl`, in its layout (80 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniforms {
    texture_size: [f32; 2],
    viewport_px: [f32; 2],
    tile_size: f32,
    patch_size: f32,
    highlight: f32,
    grid_alpha: f32,
    grid_color: [f32; 4],
    highlight_color: [f32; 4],
    srgb_target: f32,
    padding: [f32; 3],
}

impl Uniforms {
    fn new(image: &CanvasImage, viewport_px: Vec2, colors: LineColors) -> Self {
        Self {
            texture_size: [image.mosaic.width() as f32, image.mosaic.height() as f32],
            viewport_px: [viewport_px.x, viewport_px.y],
            tile_size: image.tile_size as f32,
            patch_size: image.patch_size as f32,
            highlight: image.highlight.map_or(-1.0, |index| index as f32),
            grid_alpha: GRID_ALPHA,
            grid_color: colors.grid.to_normalized_gamma_f32(),
            highlight_color: colors.highlight.to_normalized_gamma_f32(),
            srgb_target: 0.0,
            padding: [0.0; 3],
        }
    }
}

/// GPU objects of the canvas, kept in egui-wgpu's callback resources.
struct CanvasResources {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    uniforms: wgpu::Buffer,
    srgb_target: bool,
    /// The uploaded mosaic with its bind group and version.
    texture: Option<(wgpu::Texture, wgpu::BindGroup, u64)>,
}

/// Builds the canvas pipeline for the window's wgpu device. Returns whether it is ready.
pub fn install(render_state: &egui_wgpu::RenderState) -> bool {
    let device = &render_state.device;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("canvas"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("canvas"),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: NonZeroU64::new(std::mem::size_of::<Uniforms>() as u64),
                },
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 1,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Float { filterable: false },
                    view_dimension: wgpu::TextureViewDimension::D2,
                    multisampled: false,
                },
                count: None,
            },
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("canvas"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("canvas"),
        layout: Some(&pipeline_layout),
        vertex: wgpu::VertexState {
            module: &module,
            entry_point: Some("vs_main"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            buffers: &[],
        },
        primitive: wgpu::PrimitiveState::default(),
        depth_stencil: None,
        multisample: wgpu::MultisampleState::default(),
        fragment: Some(wgpu::FragmentState {
            module: &module,
            entry_point: Some("fs_main"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            targets: &[Some(wgpu::ColorTargetState {
                format: render_state.target_format,
                blend: None,
                write_mask: wgpu::ColorWrites::ALL,
            })],
        }),
        multiview_mask: None,
        cache: None,
    });
    let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("canvas uniforms"),
        size: std::mem::size_of::<Uniforms>() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    render_state
        .renderer
        .write()
        .callback_resources
        .insert(CanvasResources {
            pipeline,
            layout,
            uniforms,
            srgb_target: render_state.target_format.is_srgb(),
            texture: None,
        });
    true
}

/// One frame's draw of the canvas.
struct CanvasCallback {
    image: Arc<CanvasImage>,
    uniforms: Uniforms,
}

impl egui_wgpu::CallbackTrait for CanvasCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(resources) = resources.get_mut::<CanvasResources>() else {
            return Vec::new();
        };
        let current = resources
            .texture
            .as_ref()
            .is_some_and(|(_, _, version)| *version == self.image.version);
        if !current {
            let (texture, bind_group) = upload(device, queue, resources, &self.image.mosaic);
            resources.texture = Some((texture, bind_group, self.image.version));
        }
        let uniforms = Uniforms {
            srgb_target: if resources.srgb_target { 1.0 } else { 0.0 },
            ..self.uniforms
        };
        // NOTE: the uniform buffer is shared, so two canvases in one frame would both draw
        // with the last one's uniforms. The window shows one canvas.
        queue.write_buffer(&resources.uniforms, 0, bytemuck::bytes_of(&uniforms));
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(resources) = resources.get::<CanvasResources>() else {
            return;
        };
        let Some((_, bind_group, _)) = &resources.texture else {
            return;
        };
        render_pass.set_pipeline(&resources.pipeline);
        render_pass.set_bind_group(0, bind_group, &[]);
        render_pass.draw(0..3, 0..1);
    }
}

fn upload(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    resources: &CanvasResources,
    mosaic: &RgbaImage,
) -> (wgpu::Texture, wgpu::BindGroup) {
    let size = wgpu::Extent3d {
        width: mosaic.width(),
        height: mosaic.height(),
        depth_or_array_layers: 1,
    };
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("canvas mosaic"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    queue.write_texture(
        texture.as_image_copy(),
        mosaic.as_raw(),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(4 * mosaic.width()),
            rows_per_image: Some(mosaic.height()),
        },
        size,
    );
    let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("canvas"),
        layout: &resources.layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: resources.uniforms.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: wgpu::BindingResource::TextureView(&view),
            },
        ],
    });
    (texture, bind_group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosaic_places_tiles_in_rows() {
        let colors = [
            [255u8, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [9, 9, 9],
            [1, 2, 3],
        ];
        let images: Vec<RgbImage> = colors
            .iter()
            .map(|&color| RgbImage::from_pixel(4, 4, image::Rgb(color)))
            .collect();
        let canvas = mosaic(&images).expect("mosaic");
        assert_eq!(canvas.dimensions(), (16, 8));
        assert_eq!(canvas.get_pixel(0, 0).0, [255, 0, 0, 255]);
        assert_eq!(canvas.get_pixel(5, 3).0, [0, 255, 0, 255]);
        assert_eq!(canvas.get_pixel(15, 0).0, [9, 9, 9, 255]);
        assert_eq!(canvas.get_pixel(2, 6).0, [1, 2, 3, 255]);
        assert_eq!(canvas.get_pixel(6, 6).0, [0, 0, 0, 255]);
        assert!(mosaic(&[]).is_none());
    }

    #[test]
    fn shader_parses_and_validates() {
        let module = naga::front::wgsl::parse_str(SHADER).expect("canvas.wgsl parses");
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .expect("canvas.wgsl validates");
        let uniforms = module
            .types
            .iter()
            .find(|(_, ty)| ty.name.as_deref() == Some("Uniforms"))
            .expect("Uniforms struct");
        let naga::TypeInner::Struct { span, .. } = uniforms.1.inner else {
            panic!("Uniforms is not a struct");
        };
        assert_eq!(span as usize, std::mem::size_of::<Uniforms>());
    }
}
